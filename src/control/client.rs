//! `slotman status`.

use std::path::PathBuf;

pub async fn status(_service: Option<String>, _json: bool, _runtime_dir: Option<PathBuf>) -> anyhow::Result<()> {
    anyhow::bail!("slotman status is not implemented yet")
}
