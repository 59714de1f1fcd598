//! `pip install .` builds the wheel through maturin, which runs this first: the
//! BPF objects the package ships are built by the Makefile (clang, this kernel's
//! BTF), so the wheel holds them. `make` builds them itself and sets
//! ECAPTURE_BPF_BUILT so that this does nothing; `cargo test` in native/ sets
//! nothing and builds them too when the tree has them (a no-op when they are current).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=ECAPTURE_BPF_BUILT");
    println!("cargo:rerun-if-changed=../bpf");
    if env::var_os("ECAPTURE_BPF_BUILT").is_some() {
        return;
    }
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("..");
    if !root.join("Makefile").exists() || !root.join("bpf").is_dir() {
        return; // not built from the source tree (a vendored crate): nothing to build
    }
    let status = Command::new("make")
        .arg("-C")
        .arg(&root)
        .arg("bpf")
        .status()
        .expect("running make to build the BPF objects");
    assert!(
        status.success(),
        "make bpf failed: the BPF objects are needed by the package"
    );
}
