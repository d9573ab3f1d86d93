//! The files API: reading, writing, listing, making and removing paths inside a
//! machine's root filesystem, whether the machine is started or stopped.
//!
//! Path safety belongs to the driver, which resolves every path inside the machine's
//! root; this layer checks the machine, takes its lock (so a file never lands in a
//! root that a restore is replacing) and the lease for changes, and bounds sizes.

use hangar_types::{ErrorCode, FileEntry};

use super::{Caller, Service};
use crate::driver::{DriverError, FileData, WriteOptions};
use crate::error::{Error, Result};
use crate::model::MachineRecord;

/// The largest file the files API writes or reads in one request.
pub const MAX_FILE_SIZE: u64 = 64 * 1024 * 1024;

/// What a `GET` of a path found.
#[derive(Debug, Clone, PartialEq)]
pub enum FileRead {
    File(FileData),
    Dir(Vec<FileEntry>),
}

/// A parsed write: `PUT .../files?path=&mode=&uid=&gid=&parents=`.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteFileRequest {
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub parents: bool,
}

/// Parses a mode given as an octal string (`0644`, `755`, `0o600`).
pub fn parse_mode(mode: &str) -> Result<u32> {
    let digits = mode.strip_prefix("0o").unwrap_or(mode);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if !digits.is_empty() && m <= 0o7777 => Ok(m),
        _ => Err(Error::bad_request(format!(
            "mode {mode:?} is not an octal permission mode; give one like 0644 or 0755"
        ))),
    }
}

impl Service {
    /// Reads a file, or lists a directory (always when `list`).
    pub async fn read_file(&self, app: &str, id: &str, path: &str, list: bool) -> Result<FileRead> {
        let machine = self.files_machine(app, id).await?;
        let _guard = self.lock(&machine.id).await;
        if !list {
            match self
                .driver
                .read_file(&machine.id, path, MAX_FILE_SIZE)
                .await
            {
                Ok(data) => return Ok(FileRead::File(data)),
                Err(DriverError::Path {
                    kind: crate::driver::PathErrorKind::IsADirectory,
                    ..
                }) => {}
                Err(e) => return Err(files_error(&machine, e)),
            }
        }
        let entries = self
            .driver
            .list_files(&machine.id, path)
            .await
            .map_err(|e| files_error(&machine, e))?;
        Ok(FileRead::Dir(entries))
    }

    /// Creates or atomically replaces a file.
    pub async fn write_file(
        &self,
        app: &str,
        id: &str,
        req: WriteFileRequest,
        caller: &Caller,
    ) -> Result<()> {
        if req.contents.len() as u64 > MAX_FILE_SIZE {
            return Err(too_large());
        }
        let machine = self.files_change(app, id, caller).await?;
        let _guard = self.lock(&machine.id).await;
        let options = WriteOptions {
            mode: req.mode,
            uid: req.uid,
            gid: req.gid,
            parents: req.parents,
        };
        self.driver
            .write_file(&machine.id, &req.path, req.contents, options)
            .await
            .map_err(|e| files_error(&machine, e))
    }

    pub async fn make_dir(
        &self,
        app: &str,
        id: &str,
        path: &str,
        mode: u32,
        parents: bool,
        caller: &Caller,
    ) -> Result<()> {
        let machine = self.files_change(app, id, caller).await?;
        let _guard = self.lock(&machine.id).await;
        self.driver
            .make_dir(&machine.id, path, mode, parents)
            .await
            .map_err(|e| files_error(&machine, e))
    }

    pub async fn remove_file(
        &self,
        app: &str,
        id: &str,
        path: &str,
        recursive: bool,
        caller: &Caller,
    ) -> Result<()> {
        let machine = self.files_change(app, id, caller).await?;
        let _guard = self.lock(&machine.id).await;
        self.driver
            .remove_file(&machine.id, path, recursive)
            .await
            .map_err(|e| files_error(&machine, e))
    }

    async fn files_machine(&self, app: &str, id: &str) -> Result<MachineRecord> {
        self.live_machine(app, id).await
    }

    async fn files_change(&self, app: &str, id: &str, caller: &Caller) -> Result<MachineRecord> {
        let machine = self.live_machine(app, id).await?;
        self.check_lease(&machine, caller)?;
        Ok(machine)
    }
}

/// A machine whose sandbox is gone (being destroyed or rebuilt) has no files now.
fn files_error(machine: &MachineRecord, err: DriverError) -> Error {
    match err {
        DriverError::NotFound(_) => Error::request(
            ErrorCode::InvalidState,
            format!(
                "machine {} is {} and has no root filesystem right now; wait for it to settle (GET .../wait) and retry",
                machine.id, machine.state
            ),
        ),
        err => Error::Driver(err),
    }
}

fn too_large() -> Error {
    Error::request(
        ErrorCode::PayloadTooLarge,
        format!(
            "files larger than {} MiB cannot be written through the files API; put them in the image or a volume",
            MAX_FILE_SIZE / (1024 * 1024)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("0644").unwrap(), 0o644);
        assert_eq!(parse_mode("755").unwrap(), 0o755);
        assert_eq!(parse_mode("0o600").unwrap(), 0o600);
        for bad in ["", "9", "rw-r--r--", "17777", "-1"] {
            assert_eq!(
                parse_mode(bad).unwrap_err().code(),
                ErrorCode::BadRequest,
                "{bad}"
            );
        }
    }
}
