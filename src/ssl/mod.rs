//! Self-supervised methods. The losses live in [`losses`] as pure tape functions with their
//! own tests; the methods (heads, views, after-step hooks) come with the training loop.

pub mod losses;
