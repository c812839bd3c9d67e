//! The `edubus` command line.

fn main() {}
