//! Records the git commit, makes the binary find libtorch without LD_LIBRARY_PATH, and keeps
//! libtorch_cuda linked.
//!
//! The linker drops libtorch_cuda.so as "unneeded" (no symbol is referenced directly), which leaves
//! CUDA undetected at run time (tch-rs issues #329, #907, #980); --no-as-needed keeps it.
fn main() {
    // The commit a binary was built from goes into every run manifest.
    let sha = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    // Dirty means a tracked input of the results differs from the commit: the tool's own outputs
    // (reports/, theory/'s verification files) and prose (*.md) do not count, so regenerating
    // a committed report does not mark the run that regenerates it as built from an unknown tree.
    let dirty = std::process::Command::new("git")
        .args([
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":(exclude)reports",
            ":(exclude)theory/verification*",
            ":(exclude)*.md",
        ])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    println!(
        "cargo:rustc-env=CKPT_SCAN_GIT_SHA={sha}{}",
        if dirty { "-dirty" } else { "" }
    );
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
        if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-ltorch_cuda");
        }
    }
}
