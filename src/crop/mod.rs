//! Crops: ContrastiveCrop's semantic boxes ([`heatmap`]); the samplers and the schedule come
//! with the data pipeline.

pub mod heatmap;
pub mod sampler;
pub mod schedule;
pub mod viz;
