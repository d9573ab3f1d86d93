//! Builds `hangar-init` as a static executable and hands its path to the crate, which
//! embeds it (`INIT_BINARY`): installing the `hangar` binary is all it takes.
//!
//! A plain dependency cannot do this: `+crt-static` must apply to init alone, not to
//! the proc-macros the workspace builds. So this runs a nested cargo with its own
//! target directory under `OUT_DIR` and an explicit `--target` (which keeps host
//! artifacts such as proc-macros dynamic). Setting `HANGAR_INIT_BINARY` to a
//! prebuilt static init skips the nested build.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=HANGAR_INIT_BINARY");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    // The lexical parent, not `..`: the crate directory may be a symlink.
    let crates_dir = manifest_dir.parent().expect("crate has a parent directory");
    let init_dir = crates_dir.join("hangar-init");
    for path in ["src", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", init_dir.join(path).display());
    }
    if let Some(root) = crates_dir.parent() {
        println!(
            "cargo:rerun-if-changed={}",
            root.join("Cargo.lock").display()
        );
    }

    if let Some(prebuilt) = env::var_os("HANGAR_INIT_BINARY") {
        emit(Path::new(&prebuilt));
        return;
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let target = env::var("TARGET").unwrap();
    let target_dir = out_dir.join("init-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());

    let mut cmd = Command::new(cargo);
    cmd.current_dir(&init_dir)
        .args([
            "build",
            "--release",
            "--offline",
            "-p",
            "hangar-init",
            "--bin",
            "hangar-init",
        ])
        .arg("--manifest-path")
        .arg(init_dir.join("Cargo.toml"))
        .arg("--target")
        .arg(&target)
        .arg("--target-dir")
        .arg(&target_dir);
    // Everything the outer cargo set for this build script would steer the nested one
    // into the outer build (its wrapper, flags, target dir, profile); keep only what
    // locates the toolchain and the jobserver.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let keep = matches!(
            key.as_str(),
            "PATH"
                | "HOME"
                | "CARGO_HOME"
                | "RUSTUP_HOME"
                | "RUSTUP_TOOLCHAIN"
                | "RUSTC"
                | "CARGO_MAKEFLAGS"
                | "TMPDIR"
                | "LANG"
                | "TERM"
        );
        let outer = key.starts_with("CARGO") || key.starts_with("RUST") || key.starts_with("DEP_");
        if !keep
            && (outer
                || matches!(
                    key.as_str(),
                    "TARGET" | "HOST" | "OUT_DIR" | "OPT_LEVEL" | "PROFILE" | "DEBUG" | "NUM_JOBS"
                ))
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        ["-C", "target-feature=+crt-static", "-C", "strip=debuginfo"].join("\x1f"),
    );
    cmd.env("CARGO_PROFILE_RELEASE_DEBUG", "false");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running cargo to build hangar-init: {e}"));
    assert!(status.success(), "building the static hangar-init failed");
    emit(&target_dir.join(&target).join("release/hangar-init"));
}

fn emit(path: &Path) {
    assert!(path.is_file(), "no init binary at {}", path.display());
    println!("cargo:rustc-env=HANGAR_INIT_PATH={}", path.display());
}
