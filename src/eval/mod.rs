//! Evaluation: backbone features, the weighted kNN monitor and the linear probe.

pub mod knn;
pub mod linear;
