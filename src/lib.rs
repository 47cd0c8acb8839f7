//! viewcraft: self-supervised visual representation learning with semantic-aware crops,
//! on any GPU through wgpu, with a plain-Rust CPU reference for every kernel.

pub mod autograd;
pub mod bench;
pub mod cli;
pub mod config;
pub mod crop;
pub mod data;
pub mod dist;
pub mod error;
pub mod eval;
pub mod gpu;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod smoke;
pub mod ssl;
pub mod tensor;
pub mod train;

pub use autograd::{Grads, Tape, Var};
pub use error::{Error, Result};
pub use tensor::{Device, Tensor};
