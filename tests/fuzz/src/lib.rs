//! Shared by the fuzz targets: the login packets and seeds from the repository's corpus.

use std::path::PathBuf;
use std::sync::OnceLock;

use fleetgate::protocols::fuzz::Seeds;

/// The repository's `protocols/` directory.
pub fn protocols_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../protocols")
}

/// Loaded once per fuzzing process.
pub fn seeds() -> &'static Seeds {
    static SEEDS: OnceLock<Seeds> = OnceLock::new();
    SEEDS.get_or_init(|| fleetgate::protocols::fuzz::seeds(&protocols_dir()))
}
