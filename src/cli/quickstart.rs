//! The main job: `configs/quickstart.toml` (SimCLR + ContrastiveCrop on the shipped CIFAR-10
//! subset, a narrow ResNet-18, 10 epochs, kNN monitor, a short linear probe) run into
//! `runs/quickstart`, then a small results table. Sized to finish in minutes on a 2-core CPU.

use std::path::PathBuf;

use crate::config::Config;
use crate::error::Result;

#[derive(Clone, Debug, Default, clap::Args)]
pub struct QuickstartArgs {
    /// Override a field of configs/quickstart.toml, e.g. `--set train.epochs=2`.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub sets: Vec<String>,
    /// Run directory (default: runs/quickstart, or the next free runs/quickstart-N).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: &QuickstartArgs, device_flag: Option<&str>) -> Result<()> {
    let cfg = Config::load(None, &args.sets)?;
    let device = super::select_device_or(device_flag, &cfg.train.device)?;
    let summary = super::pretrain::run(&cfg, None, args.out.as_deref(), false, &device)?;
    if crate::dist::place().is_root() {
        super::pretrain::print_table(&summary);
    }
    Ok(())
}
