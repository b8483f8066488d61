//! The name table on disk, so that after a restart mesh names are answered before the control
//! plane is reachable: one file, replaced atomically (written beside it, synced, renamed, the
//! directory synced), read once at start.

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;
use weft_xds::nds;

use crate::table::NameTable;
use crate::DnsError;

/// The file name inside the state directory.
pub const TABLE_FILE: &str = "nametable.pb";

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Creates the directory when missing.
    pub fn open(dir: &Path) -> Result<StateDir, DnsError> {
        std::fs::create_dir_all(dir).map_err(|e| DnsError::State { path: dir.to_path_buf(), reason: e.to_string() })?;
        Ok(StateDir { dir: dir.to_path_buf() })
    }

    pub fn table_path(&self) -> PathBuf {
        self.dir.join(TABLE_FILE)
    }

    /// The table saved last; `Ok(None)` when there is none yet.
    pub fn load(&self) -> Result<Option<NameTable>, DnsError> {
        let path = self.table_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DnsError::State { path, reason: e.to_string() }),
        };
        NameTable::decode(&bytes).map(Some).map_err(|e| DnsError::State { path, reason: e.to_string() })
    }

    /// Replaces the saved table; a crash at any point leaves the old or the new file whole.
    pub fn save(&self, table: &nds::NameTable) -> Result<(), DnsError> {
        let path = self.table_path();
        let fail = |e: std::io::Error| DnsError::State { path: path.clone(), reason: e.to_string() };
        let tmp = self.dir.join(format!(".{TABLE_FILE}.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&table.encode_to_vec())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_table_loads_back_and_a_damaged_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("sub")).unwrap();
        assert!(state.load().unwrap().is_none());
        let mut t = nds::NameTable::default();
        t.table.insert("a.example".into(), nds::NameInfo { ips: vec!["10.0.0.1".into()], ..Default::default() });
        state.save(&t).unwrap();
        let back = state.load().unwrap().unwrap();
        assert_eq!(back.proto(), &t);
        assert_eq!(back.get("a.example").unwrap().v4.len(), 1);
        // Only the table file is left behind.
        let files: Vec<_> =
            std::fs::read_dir(dir.path().join("sub")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files, [TABLE_FILE]);
        std::fs::write(state.table_path(), b"\xff\xff\xff").unwrap();
        let e = state.load().unwrap_err().to_string();
        assert!(e.contains(TABLE_FILE), "{e}");
    }
}
