//! The launcher: PID 1 of the trainer container. See `run` for the
//! supervisor, `forward` for who receives a forwarded signal and why,
//! `checkpoint` for what counts as a complete checkpoint, and `report` for the
//! termination report the operator reads.

pub mod checkpoint;
pub mod cli;
pub mod fence;
pub mod forward;
pub mod handover;
pub mod install;
pub mod report;
pub mod reportfile;
pub mod run;
pub mod saves;
pub mod shm;
pub mod sys;
