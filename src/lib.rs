//! trainingjob-operator: keeps long GPU training jobs alive across spot
//! preemptions. See DESIGN.md in the project's shared folder for the shape.

pub mod api;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod defaults;
pub mod error;
pub mod finalizers;
pub mod grace;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod observe;
pub mod pods;
pub mod quantity;
pub mod shell;
pub mod shm;
pub mod uninstall;
