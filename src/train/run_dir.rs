//! A run directory: everything a run leaves behind, so nothing is lost and an interrupted run
//! can continue where it stopped.
//!
//! ```text
//! RUN_DIR/config.toml          the resolved configuration (file + --set overrides)
//! RUN_DIR/metrics.jsonl        one JSON object per line, `event` = step | epoch | boxes | knn
//!                              | checkpoint | linear_epoch | linear | done
//! RUN_DIR/checkpoints/         epoch_<e>.safetensors every save_interval, last.safetensors
//! RUN_DIR/loss.svg, knn.svg    plots (rewritten at the end of every epoch)
//! RUN_DIR/summary.json         written last: the run is finished
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::train::atomic::write_atomic;
use crate::train::checkpoint::Position;

pub struct RunDir {
    pub root: PathBuf,
}

/// What a run directory holds before a run starts.
#[derive(Debug, PartialEq)]
pub enum RunState {
    /// Nothing (or nothing worth resuming: no checkpoint yet).
    Fresh,
    /// An unfinished run with this checkpoint.
    Interrupted(PathBuf),
    /// A finished run (`summary.json` exists).
    Finished,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn last_checkpoint(&self) -> PathBuf {
        self.checkpoints().join("last.safetensors")
    }

    pub fn state(&self) -> RunState {
        if self.root.join("summary.json").exists() {
            RunState::Finished
        } else if self.last_checkpoint().exists() {
            RunState::Interrupted(self.last_checkpoint())
        } else {
            RunState::Fresh
        }
    }

    /// The first of `base`, `base-2`, `base-3`... that does not hold a finished run.
    pub fn next_free(base: &Path) -> PathBuf {
        let mut p = base.to_path_buf();
        let mut i = 2;
        while RunDir::new(&p).state() == RunState::Finished {
            p = PathBuf::from(format!("{}-{i}", base.display()));
            i += 1;
        }
        p
    }

    /// Create the directory (and `checkpoints/`) and write the resolved config; an
    /// unwritable place is an error naming it.
    pub fn create(&self, cfg: &Config) -> Result<()> {
        std::fs::create_dir_all(self.checkpoints()).map_err(|e| {
            Error::file(&self.root, format!("cannot create the run directory: {e}"))
        })?;
        write_atomic(&self.root.join("config.toml"), cfg.to_toml().as_bytes())
    }

    /// Keep only the metrics lines of the steps and epochs a checkpoint at `pos` covers
    /// (a resumed run re-logs the rest).
    pub fn truncate_metrics(&self, pos: Position) -> Result<()> {
        let path = self.metrics();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let keep: String = text
            .lines()
            .filter(|l| {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                    return false;
                };
                let num = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize);
                match (num("step"), num("epoch")) {
                    (Some(s), _) if v["event"] == "step" => s <= pos.step,
                    (_, Some(e)) => e <= pos.epoch,
                    _ => false,
                }
            })
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomic(&path, keep.as_bytes())
    }

    pub fn metrics_writer(&self) -> Result<Metrics> {
        let path = self.metrics();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::file(&path, format!("cannot write metrics: {e}")))?;
        Ok(Metrics { file, path })
    }

    /// Loss per step and kNN per epoch as SVG plots, from `metrics.jsonl`.
    pub fn plot(&self) -> Result<()> {
        let Ok(text) = std::fs::read_to_string(self.metrics()) else {
            return Ok(());
        };
        let (mut loss, mut knn, mut lin) = (Vec::new(), Vec::new(), Vec::new());
        for l in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                continue;
            };
            let f = |k: &str| v.get(k).and_then(|x| x.as_f64());
            match v["event"].as_str() {
                Some("step") => loss.extend(f("step").zip(f("loss"))),
                Some("knn") => knn.extend(f("epoch").zip(f("knn_top1").map(|a| 100.0 * a))),
                Some("linear_epoch") => {
                    lin.extend(f("epoch").zip(f("test_top1").map(|a| 100.0 * a)))
                }
                _ => {}
            }
        }
        if !loss.is_empty() {
            line_plot(
                &self.root.join("loss.svg"),
                "pre-training loss",
                "step",
                &loss,
            )?;
        }
        if !knn.is_empty() {
            line_plot(&self.root.join("knn.svg"), "kNN top-1 (%)", "epoch", &knn)?;
        }
        if !lin.is_empty() {
            line_plot(
                &self.root.join("linear.svg"),
                "linear probe test top-1 (%)",
                "epoch",
                &lin,
            )?;
        }
        Ok(())
    }

    pub fn finish(&self, summary: &serde_json::Value) -> Result<()> {
        let text = serde_json::to_string_pretty(summary).unwrap_or_default();
        write_atomic(&self.root.join("summary.json"), text.as_bytes())
    }
}

/// `metrics.jsonl`, one flushed line per record.
pub struct Metrics {
    file: std::fs::File,
    path: PathBuf,
}

impl Metrics {
    /// Append `{"event": event, ...fields}`.
    pub fn write(&mut self, event: &str, fields: &impl serde::Serialize) -> Result<()> {
        let mut v = serde_json::to_value(fields).unwrap_or(serde_json::Value::Null);
        let mut obj = serde_json::Map::new();
        obj.insert("event".into(), event.into());
        if let serde_json::Value::Object(m) = &mut v {
            obj.append(m);
        }
        let line = serde_json::Value::Object(obj).to_string();
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::file(&self.path, format!("cannot write metrics: {e}")))
    }
}

fn line_plot(path: &Path, title: &str, xlabel: &str, pts: &[(f64, f64)]) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: String| Error::file(path, format!("cannot draw the plot: {e}"));
    let (x0, x1) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let (y0, y1) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    let root = SVGBackend::new(path, (640, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(xlabel)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    chart
        .draw_series(LineSeries::new(pts.iter().copied(), &BLUE))
        .map_err(|e| err(e.to_string()))?;
    if pts.len() < 40 {
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))
}
