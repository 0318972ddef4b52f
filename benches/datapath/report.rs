//! How every section prints: one row per measurement (median of the runs, min–max, the backend's
//! CPU), and the ratios the targets are stated in.

use crate::common::summary;

/// Prints a row; returns the median.
pub fn print_row(name: &str, unit: &str, values: &[f64], cpu: &[f64]) -> f64 {
    let (m, lo, hi) = summary(values);
    let cpu = summary(cpu).0;
    let fmt = |v: f64| {
        if v >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.2}")
        }
    };
    println!(
        "{name:<48} {:>11} {unit:<8} ({}-{})  cpu {cpu:.0}%",
        fmt(m),
        fmt(lo),
        fmt(hi)
    );
    m
}

/// Prints a ratio against its target.
pub fn print_ratio(name: &str, ratio: f64, target: f64) {
    let verdict = if ratio >= target { "met" } else { "MISSED" };
    println!("  => {name}: {ratio:.2}x (target >= {target}x: {verdict})");
}
