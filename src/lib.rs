//! trainingjob-operator: keeps long GPU training jobs alive across spot
//! preemptions. See DESIGN.md in the project's shared folder for the shape.

pub mod api;
pub mod crd;
pub mod grace;
pub mod pods;
pub mod quantity;
pub mod shm;
