//! `sqlx::migrate!` embeds the migrations at compile time: rebuild when one is added or
//! changed, or the binary would run without it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
