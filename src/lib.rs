//! trainingjob-operator: keeps long GPU training jobs alive across spot
//! preemptions. The README's layout table says where each concept lives.

pub mod accelerators;
pub mod api;
pub mod apply;
pub mod backoff;
pub mod cache;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod defaults;
pub mod error;
pub mod events;
pub mod finalizers;
pub mod grace;
pub mod heap;
pub mod labels;
pub mod leader;
pub mod ledger;
pub mod lifecycle;
pub mod metrics;
pub mod nodes;
pub mod observe;
pub mod pods;
pub mod preflight;
pub mod quantity;
pub mod queue;
pub mod reports;
pub mod shell;
pub mod shm;
pub mod text;
pub mod timeline;
pub mod transition;
pub mod uninstall;
pub mod validate;
