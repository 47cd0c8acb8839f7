//! Evaluation: backbone features and the weighted kNN monitor.

pub mod knn;
