//! Makes the binary find libtorch without LD_LIBRARY_PATH and keeps libtorch_cuda linked.
//!
//! The linker drops libtorch_cuda.so as "unneeded" (no symbol is referenced directly), which leaves
//! CUDA undetected at run time (tch-rs issues #329, #907, #980); --no-as-needed keeps it.
fn main() {
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
