//! [`Driver`] for [`SandboxDriver`]: each verb delegates to its own file.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use hangar_core::MachineId;
use hangar_core::driver::{
    Attachment, CheckpointDiff, Driver, DriverError, DriverEvent, ExecOutput, ExecSpec, ExitStatus,
    FileData, FileEntry, Observed, ProcessInfo, ProcessSpec, Resources, SandboxSpec, VolumeOrigin,
    VolumeUsage, WriteOptions,
};
use tokio::sync::broadcast;

use super::SandboxDriver;

#[async_trait]
impl Driver for SandboxDriver {
    fn name(&self) -> &'static str {
        "sandbox"
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), DriverError> {
        Ok(self.create_sandbox(spec).await?)
    }

    async fn start(&self, id: &MachineId, process: &ProcessSpec) -> Result<(), DriverError> {
        Ok(self.start_process(id, process).await?)
    }

    async fn stop(
        &self,
        id: &MachineId,
        signal: i32,
        timeout: Duration,
    ) -> Result<Option<ExitStatus>, DriverError> {
        Ok(self.stop_process(id, signal, timeout).await?)
    }

    async fn signal(&self, id: &MachineId, signal: i32) -> Result<(), DriverError> {
        Ok(self.signal_process(id, signal).await?)
    }

    async fn exec(&self, id: &MachineId, exec: &ExecSpec) -> Result<ExecOutput, DriverError> {
        Ok(self.exec_command(id, exec, None).await?)
    }

    async fn exec_streaming(
        &self,
        id: &MachineId,
        exec: &ExecSpec,
        sink: &hangar_core::driver::OutputSink,
    ) -> Result<ExecOutput, DriverError> {
        Ok(self.exec_command(id, exec, Some(sink)).await?)
    }

    async fn signal_exec(
        &self,
        id: &MachineId,
        exec_id: &str,
        signal: i32,
    ) -> Result<(), DriverError> {
        Ok(self.signal_command(id, exec_id, signal).await?)
    }

    async fn write_exec_stdin(
        &self,
        id: &MachineId,
        exec_id: &str,
        data: &[u8],
        eof: bool,
    ) -> Result<(), DriverError> {
        Ok(self.write_command_stdin(id, exec_id, data, eof).await?)
    }

    async fn ps(&self, id: &MachineId) -> Result<Vec<ProcessInfo>, DriverError> {
        Ok(self.list_processes(id).await?)
    }

    async fn suspend(&self, id: &MachineId) -> Result<(), DriverError> {
        Ok(self.set_frozen(id, true).await?)
    }

    async fn resume(&self, id: &MachineId) -> Result<(), DriverError> {
        Ok(self.set_frozen(id, false).await?)
    }

    async fn update_resources(
        &self,
        id: &MachineId,
        resources: Resources,
    ) -> Result<(), DriverError> {
        Ok(self.update_limits(id, resources)?)
    }

    async fn destroy(&self, id: &MachineId) -> Result<(), DriverError> {
        self.forget_netns(id);
        Ok(self.destroy_sandbox(id).await?)
    }

    async fn connect(
        &self,
        id: &MachineId,
        port: u16,
    ) -> Result<tokio::net::TcpStream, DriverError> {
        self.connect_machine(id, port).await
    }

    async fn observe(&self, id: &MachineId) -> Result<Observed, DriverError> {
        Ok(self.observe_machine(id).await?)
    }

    async fn list(&self) -> Result<Vec<MachineId>, DriverError> {
        Ok(self.list_machines()?)
    }

    fn subscribe(&self) -> broadcast::Receiver<DriverEvent> {
        self.shared.events.subscribe()
    }

    fn log_path(&self, id: &MachineId) -> PathBuf {
        self.machine_dir(id).join("log")
    }

    async fn checkpoint(&self, id: &MachineId, checkpoint: &str) -> Result<(), DriverError> {
        Ok(self.checkpoint_layer(id, checkpoint).await?)
    }

    async fn delete_checkpoint(&self, id: &MachineId, checkpoint: &str) -> Result<(), DriverError> {
        Ok(self.delete_checkpoint_layer(id, checkpoint).await?)
    }

    async fn restore(&self, spec: &SandboxSpec, checkpoint: &str) -> Result<(), DriverError> {
        Ok(self.restore_layer(spec, checkpoint).await?)
    }

    async fn fork(
        &self,
        source: &MachineId,
        checkpoint: &str,
        spec: &SandboxSpec,
    ) -> Result<(), DriverError> {
        Ok(self.fork_layer(source, checkpoint, spec).await?)
    }

    async fn checkpoint_upper(
        &self,
        id: &MachineId,
        checkpoint: &str,
    ) -> Result<PathBuf, DriverError> {
        Ok(self.storage.checkpoint_upper(id, checkpoint)?)
    }

    async fn diff(
        &self,
        id: &MachineId,
        from: &str,
        to: Option<&str>,
    ) -> Result<CheckpointDiff, DriverError> {
        Ok(self.diff_layer(id, from, to).await?)
    }

    async fn read_file(
        &self,
        id: &MachineId,
        path: &str,
        max_len: u64,
    ) -> Result<FileData, DriverError> {
        self.with_root(id, path, move |root, path| root.read(path, max_len))
            .await
    }

    async fn list_files(&self, id: &MachineId, path: &str) -> Result<Vec<FileEntry>, DriverError> {
        self.with_root(id, path, |root, path| root.list(path)).await
    }

    async fn write_file(
        &self,
        id: &MachineId,
        path: &str,
        contents: Vec<u8>,
        options: WriteOptions,
    ) -> Result<(), DriverError> {
        self.with_root(id, path, move |root, path| {
            root.write(path, &contents, options)
        })
        .await
    }

    async fn make_dir(
        &self,
        id: &MachineId,
        path: &str,
        mode: u32,
        parents: bool,
    ) -> Result<(), DriverError> {
        self.with_root(id, path, move |root, path| root.mkdir(path, mode, parents))
            .await
    }

    async fn remove_file(
        &self,
        id: &MachineId,
        path: &str,
        recursive: bool,
    ) -> Result<(), DriverError> {
        self.with_root(id, path, move |root, path| root.remove(path, recursive))
            .await
    }

    async fn reset(&self, spec: &SandboxSpec) -> Result<(), DriverError> {
        Ok(self.reset_layer(spec).await?)
    }

    async fn rebuild(&self, spec: &SandboxSpec) -> Result<(), DriverError> {
        Ok(self.rebuild_sandbox(spec).await?)
    }

    async fn create_volume(
        &self,
        id: &str,
        size: u64,
        origin: &VolumeOrigin,
        source_attached: Option<&Attachment>,
    ) -> Result<(), DriverError> {
        Ok(self
            .create_volume_image(id, size, origin, source_attached)
            .await?)
    }

    async fn extend_volume(
        &self,
        id: &str,
        size: u64,
        attached: Option<&Attachment>,
    ) -> Result<bool, DriverError> {
        Ok(self.extend_volume_image(id, size, attached).await?)
    }

    async fn snapshot_volume(
        &self,
        id: &str,
        snapshot: &str,
        attached: Option<&Attachment>,
    ) -> Result<u64, DriverError> {
        Ok(self.snapshot_volume_image(id, snapshot, attached).await?)
    }

    async fn volume_usage(&self, id: &str, attached: &Attachment) -> Option<VolumeUsage> {
        self.volume_usage_of(id, attached).await
    }

    async fn delete_volume(&self, id: &str) -> Result<(), DriverError> {
        Ok(self.delete_volume_image(id).await?)
    }

    async fn delete_volume_snapshot(&self, snapshot: &str) -> Result<(), DriverError> {
        Ok(self.delete_volume_snapshot_image(snapshot).await?)
    }
}
