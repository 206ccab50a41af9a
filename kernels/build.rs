//! Embeds libtorch's library directory in every binary and test of this package.
//!
//! torch-sys (whose `links = "tch"` exports `DEP_TCH_LIBTORCH_LIB` to direct
//! dependents) links against libtorch but records no run-time search path, so
//! without an rpath the binaries exit at start with "library not found" unless
//! `LD_LIBRARY_PATH` is set.

use std::env;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");

    match env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib_dir) => println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}"),
        Err(_) => println!(
            "cargo:warning=DEP_TCH_LIBTORCH_LIB is not set by torch-sys, so binaries carry no \
             rpath and need LD_LIBRARY_PATH to find libtorch"
        ),
    }

    // rustc links with --as-needed, which drops libtorch_cuda because no symbol
    // refers to it directly. Its static initialisers register the CUDA backend,
    // so without it tch::Cuda::is_available() is false even on a GPU host.
    if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
