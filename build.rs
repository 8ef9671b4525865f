//! Finds the console's built assets for `rust-embed` (src/http/console.rs): `console/dist`
//! when `npm run build` made it (scripts/run.sh and scripts/test.sh do), else a one-page
//! placeholder in OUT_DIR that says how to build it, so a plain `cargo build` still works.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let dist = manifest.join("console/dist");
    println!("cargo:rerun-if-changed=build.rs");
    let dir = if dist.join("index.html").is_file() {
        println!("cargo:rerun-if-changed=console/dist");
        dist
    } else {
        // Not `console/dist`: cargo reruns a build script on every build while a path it
        // watches does not exist, and each rerun recompiles Keel. The folder above changes
        // when the build creates `dist`.
        println!("cargo:rerun-if-changed=console");
        let out =
            PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("console-placeholder");
        std::fs::create_dir_all(&out).expect("create the placeholder folder");
        std::fs::write(
            out.join("index.html"),
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Keel console</title></head>\
             <body><main><h1>Keel console not built</h1><p>This binary was built without the console's assets. \
             Build them with <code>npm --prefix console ci &amp;&amp; npm --prefix console run build</code> \
             (<code>scripts/run.sh</code> does it), then rebuild Keel.</p></main></body></html>\n",
        )
        .expect("write the placeholder page");
        out
    };
    // Not KEEL_*: cargo also sets this for `cargo run`/`cargo test`, where KEEL_* would be
    // read as a setting.
    println!("cargo:rustc-env=CONSOLE_ASSETS_DIR={}", dir.display());
}
