//! `cargo bench --bench performance`: entra-rotator's API economy, scale and footprint,
//! measured against the in-process stand-ins and the real binary, printed as one Markdown
//! table (docs/performance.md explains each figure and its floor).
//!
//! `cargo bench --bench performance -- economy scale` runs only the sections named
//! (`economy`, `controller`, `scale`, `budget`, `footprint`, `quota`). Nothing here asserts a timing:
//! the figures are reported, and only correctness (every rotation done, none failed) is
//! checked.

mod budget;
mod economy;
mod footprint;
mod probe;
mod quota;
mod scale;

use std::time::Instant;

/// One line of the table.
pub struct Row {
    figure: String,
    measured: String,
    floor: String,
    note: String,
}

impl Row {
    pub fn new(figure: &str, measured: impl Into<String>, floor: &str, note: &str) -> Self {
        Self {
            figure: figure.into(),
            measured: measured.into(),
            floor: floor.into(),
            note: note.into(),
        }
    }
}

const SECTIONS: &[&str] = &["economy", "controller", "scale", "budget", "footprint", "quota"];

fn main() {
    // `cargo bench` passes `--bench`; every other argument names a section to run.
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if let Some(unknown) = chosen.iter().find(|c| !SECTIONS.contains(&c.as_str())) {
        eprintln!(
            "unknown section {unknown:?}; choose from {}",
            SECTIONS.join(", ")
        );
        std::process::exit(2);
    }
    let runs = |section: &str| chosen.is_empty() || chosen.iter().any(|c| c == section);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let started = Instant::now();
    let rows = runtime.block_on(async {
        let mut rows = Vec::new();
        if runs("footprint") {
            rows.extend(footprint::rows().await);
        }
        if runs("economy") {
            rows.extend(economy::engine_rows().await);
        }
        if runs("controller") {
            rows.extend(economy::controller_rows().await);
        }
        if runs("scale") {
            rows.extend(scale::rows().await);
        }
        if runs("budget") {
            rows.extend(budget::rows().await);
        }
        if runs("quota") {
            rows.extend(economy::mail_rows().await);
            rows.extend(quota::rows().await);
        }
        rows
    });
    print_table(&rows);
    eprintln!("(measured in {:.0} s)", started.elapsed().as_secs_f64());
}

fn print_table(rows: &[Row]) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "entra-rotator {} · {} · {cpus} CPU(s) · {}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        chrono::Utc::now().format("%Y-%m-%d")
    );
    println!();
    println!("| figure | measured | floor / target | note |");
    println!("|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} |",
            row.figure, row.measured, row.floor, row.note
        );
    }
}
