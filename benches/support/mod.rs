//! Helpers the bench binaries share (each bench is its own crate; included with `#[path]`, in a
//! folder so that cargo does not take it for a bench of its own).

use std::str::FromStr;

/// The value after `name` in `args`, or `default`; a value that does not parse is a usage error.
pub fn flag<T: FromStr>(args: &[String], name: &str, default: T) -> T {
    match args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
    {
        Some(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} {v:?}: expected a number")),
        None => default,
    }
}

/// The median (mean of the middle two for an even count); NaN for none.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}
