//! Where lampyr keeps its data on this host.

use std::path::PathBuf;

/// The file holding the management API token, inside the data directory.
pub const TOKEN_FILE: &str = "token";

/// The default data directory: `$LAMPYR_DATA_DIR`, else
/// `$XDG_DATA_HOME/lampyr`, else `~/.local/share/lampyr`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LAMPYR_DATA_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("lampyr");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".local/share/lampyr")
}
