//! The swarm benchmark's PNG chart (plotters, bitmap backend): per mode three bars,
//! p50 and max completion time as a ratio to the line-rate limit and upstream egress
//! as a ratio to the blob, with a line at 1.0 (the best any mode can do on each).
//!
//! Text needs a TrueType font, read at run time (Debian's `fonts-dejavu-core` by
//! default): no fontconfig, no system font lookup.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

use super::report::{ModeRun, Setup};

/// Where Debian's `fonts-dejavu-core` puts its sans-serif font.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const FAMILY: &str = "sans-serif";

/// Draws the chart of `runs` to `png`, with the font at `font`.
pub fn draw(png: &Path, font: &Path, setup: &Setup, runs: &[ModeRun]) -> anyhow::Result<()> {
    let bytes = std::fs::read(font).map_err(|e| {
        anyhow::anyhow!(
            "reading the chart's font {}: {e} (Debian package fonts-dejavu-core, or --font FILE)",
            font.display()
        )
    })?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{} is not a TrueType font", font.display()))?;

    let figures: Vec<_> = runs.iter().map(|r| (r.mode, r.figures(setup))).collect();
    let tallest = |f: &super::report::Figures| {
        let t = f.max_ratio.max(f.egress_ratio).max(f.p50_ratio);
        if t.is_finite() { t } else { 0.0 }
    };
    // Room above the bars for the mode names and the legend.
    let top = figures
        .iter()
        .map(|(_, f)| tallest(f))
        .fold(1.0_f64, f64::max)
        * 1.6;
    let n = runs.len().max(1) as f64;

    let root = BitMapBackend::new(png, (960, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let caption = format!(
        "{} nodes pull a {:.0} MiB blob, every link {}, {}",
        setup.nodes,
        setup.size as f64 / f64::from(1 << 20),
        setup.link_text(),
        setup.uplink.describe()
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, (FAMILY, 24))
        .margin(18)
        .x_label_area_size(10)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n, 0.0..top)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("ratio (1.0 = the best possible)")
        .label_style((FAMILY, 15))
        .draw()
        .map_err(draw_err)?;

    let bars: [(&str, RGBColor); 3] = [
        ("p50 completion ÷ line-rate limit", RGBColor(66, 133, 244)),
        ("max completion ÷ line-rate limit", RGBColor(219, 68, 55)),
        ("upstream egress ÷ blob", RGBColor(15, 157, 88)),
    ];
    for (k, (label, color)) in bars.into_iter().enumerate() {
        let x0 = |i: usize| i as f64 + 0.12 + k as f64 * 0.26;
        let value = |f: &super::report::Figures| match k {
            0 => f.p50_ratio,
            1 => f.max_ratio,
            _ => f.egress_ratio,
        };
        chart
            .draw_series(figures.iter().enumerate().map(|(i, (_, f))| {
                Rectangle::new([(x0(i), 0.0), (x0(i) + 0.24, value(f))], color.filled())
            }))
            .map_err(draw_err)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        chart
            .draw_series(figures.iter().enumerate().map(|(i, (_, f))| {
                Text::new(
                    format!("{:.2}", value(f)),
                    (x0(i) + 0.03, value(f) + top * 0.035),
                    (FAMILY, 15),
                )
            }))
            .map_err(draw_err)?;
    }
    // The mode names above their groups.
    chart
        .draw_series(figures.iter().enumerate().map(|(i, (mode, f))| {
            Text::new(
                mode.name(),
                (i as f64 + 0.42, tallest(f) + top * 0.12),
                (FAMILY, 20),
            )
        }))
        .map_err(draw_err)?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 1.0), (n, 1.0)],
            BLACK,
        )))
        .map_err(draw_err)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .margin(12)
        .label_font((FAMILY, 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)?;
    root.present().map_err(draw_err)?;
    Ok(())
}

fn draw_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e}")
}
