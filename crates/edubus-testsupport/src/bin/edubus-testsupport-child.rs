//! Starts the shared Redis and PostgreSQL servers, prints where they are, and exits: the
//! process whose exit the cleanup test watches.

use edubus_testsupport::{postgres, redis};

fn main() {
    for (name, port, dir) in [
        ("redis", redis().port(), redis().dir()),
        ("postgres", postgres().port(), postgres().dir()),
    ] {
        println!("SERVER {name} {port} {}", dir.display());
    }
}
