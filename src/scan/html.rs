//! `scan --format html`: the scan as one self-contained page (inline CSS, an inline SVG
//! chart, a small inline script that sorts the table; nothing fetched, and a
//! Content-Security-Policy that forbids fetching), for the person who asks which secrets
//! expire this quarter.
//!
//! Bounded memory however large the tenant: rows are written as they come, and what sits
//! above the table on screen (the summary and the timeline) is a handful of counters,
//! written after the table and moved to the top by CSS `order`. One pass, no temporary
//! file, so it streams to stdout as well as to a file.
//!
//! Every text from Graph is anybody's (an application's `displayName` is set by whoever
//! registered it), so each is HTML-escaped, and the page's policy runs only the script
//! carrying this page's random nonce.

use super::{Row, Status};
use chrono::{DateTime, Datelike, Utc};
use std::io::{self, Write};

/// Months the timeline shows one bar each for, from the current one; later expiries
/// share one bar.
const TIMELINE_MONTHS: usize = 24;

/// What a credential counts as in the summary.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Bucket {
    Expired,
    /// Fewer than 30 whole days left.
    Within30Days,
    /// 30 to 89 whole days left.
    Within90Days,
    Later,
    NoExpiry,
}

impl Bucket {
    pub fn of(status: Status, days_left: Option<i64>) -> Self {
        match (status, days_left) {
            (Status::Expired, _) => Bucket::Expired,
            (_, None) => Bucket::NoExpiry,
            (_, Some(days)) if days < 30 => Bucket::Within30Days,
            (_, Some(days)) if days < 90 => Bucket::Within90Days,
            _ => Bucket::Later,
        }
    }

    /// The `id` of its count on the page and the words next to it.
    fn id_and_label(self) -> (&'static str, &'static str) {
        match self {
            Bucket::Expired => ("expired", "expired"),
            Bucket::Within30Days => ("within-30-days", "expire within 30 days"),
            Bucket::Within90Days => ("within-90-days", "expire within 90 days"),
            Bucket::Later => ("later", "expire later"),
            Bucket::NoExpiry => ("no-expiry", "never expire"),
        }
    }

    /// The class of its table row (colours the days left).
    fn row_class(self) -> &'static str {
        match self {
            Bucket::Expired => " class=x",
            Bucket::Within30Days => " class=s",
            Bucket::Within90Days => " class=q",
            Bucket::Later | Bucket::NoExpiry => "",
        }
    }
}

const BUCKETS: [Bucket; 5] = [
    Bucket::Expired,
    Bucket::Within30Days,
    Bucket::Within90Days,
    Bucket::Later,
    Bucket::NoExpiry,
];

/// The page being written: the counters of the summary and the timeline.
pub struct HtmlReport {
    now: DateTime<Utc>,
    /// Per bucket, in [`BUCKETS`] order.
    counts: [u64; 5],
    managed: u64,
    /// Credentials ending in the current month and the next `TIMELINE_MONTHS - 1`.
    months: [u64; TIMELINE_MONTHS],
    beyond_timeline: u64,
    /// Lets the page's own script run and no other (see the module comment).
    nonce: String,
    /// `scan --owners`: an Owners column.
    owners: bool,
}

impl HtmlReport {
    pub fn new(now: DateTime<Utc>, owners: bool) -> Self {
        Self {
            now,
            counts: [0; 5],
            managed: 0,
            months: [0; TIMELINE_MONTHS],
            beyond_timeline: 0,
            nonce: uuid::Uuid::new_v4().simple().to_string(),
            owners,
        }
    }

    /// The head and the table's header. `scope` says which applications were listed.
    pub fn begin(&self, out: &mut impl Write, scope: &str) -> io::Result<()> {
        let generated = self.now.format("%Y-%m-%d %H:%M UTC");
        write!(
            out,
            "<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n\
             <meta http-equiv=Content-Security-Policy content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'\">\n\
             <meta name=viewport content=\"width=device-width, initial-scale=1\">\n\
             <title>Entra ID credential expiry, {generated}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
             <header><h1>Entra ID credential expiry</h1>\
             <p>{scope}, as of {generated}, by <code>entra-rotator scan</code>. <a href=\"#credentials\">Every credential</a></p></header>\n\
             <section id=credentials><h2>Every credential</h2><p class=hint>Select a column heading to sort by it.</p>\n\
             <table id=credentials-table><thead><tr>",
            nonce = self.nonce,
            scope = escape(scope),
        )?;
        let owners = self.owners.then_some(("Owners", "text"));
        for (heading, kind) in COLUMNS.into_iter().chain(owners) {
            write!(
                out,
                "<th data-type={kind}><button type=button>{heading}</button></th>"
            )?;
        }
        writeln!(out, "</tr></thead>\n<tbody>")
    }

    /// One table row; end tags are left out (HTML allows it for cells and rows) to keep
    /// 5,000 credentials well under 2 MB.
    pub fn row(&mut self, out: &mut impl Write, row: &Row<'_>) -> io::Result<()> {
        let bucket = Bucket::of(row.status, row.days_left);
        self.counts[BUCKETS
            .iter()
            .position(|b| *b == bucket)
            .unwrap_or_default()] += 1;
        if row.managed_by.is_some() {
            self.managed += 1;
        }
        if let Some(end) = row.end.filter(|_| bucket != Bucket::Expired) {
            match months_from(self.now, end) {
                Some(month) if month < TIMELINE_MONTHS => self.months[month] += 1,
                _ => self.beyond_timeline += 1,
            }
        }
        let days = row
            .days_left
            .map_or_else(|| "-".to_string(), |d| d.to_string());
        let expires = row.end.map_or_else(
            || "never".to_string(),
            |e| e.format("%Y-%m-%d %H:%M").to_string(),
        );
        write!(
            out,
            "<tr{class}><td>{days}<td>{expires}<td>{status}<td>{app}<td>{app_id}<td>{kind}<td>{key_id}<td>{name}<td>{managed}",
            class = bucket.row_class(),
            status = row.status.name(),
            app = escape(&row.app.display_name),
            app_id = row.app.app_id,
            kind = row.kind,
            key_id = row.key_id,
            name = escape(row.name.unwrap_or("")),
            managed = row
                .managed_by
                .map(|rotation| format!("&#10003; {}", escape(rotation)))
                .unwrap_or_default(),
        )?;
        if self.owners {
            let owners: Vec<String> = row.app.owners.iter().map(|o| escape(o)).collect();
            write!(out, "<td>{}", owners.join(", "))?;
        }
        writeln!(out)
    }

    /// The summary and the timeline (shown above the table), the sorting script and the
    /// end of the page. `incomplete` says why the listing stopped early, if it did.
    pub fn end(
        &self,
        out: &mut impl Write,
        scanned: u64,
        incomplete: Option<&str>,
    ) -> io::Result<()> {
        writeln!(out, "</tbody></table></section>")?;
        let credentials: u64 = self.counts.iter().sum();
        write!(out, "<section id=summary><h2>Summary</h2>")?;
        if let Some(reason) = incomplete {
            write!(
                out,
                "<p class=incomplete role=alert>Incomplete: {}</p>",
                escape(reason)
            )?;
        }
        write!(
            out,
            "<p><span id=count-credentials>{credentials}</span> credentials of <span id=count-applications>{scanned}</span> applications; \
             <span id=count-managed>{}</span> managed by entra-rotator.</p><ul class=cards>",
            self.managed
        )?;
        for (bucket, count) in BUCKETS.iter().zip(self.counts) {
            let (id, label) = bucket.id_and_label();
            write!(
                out,
                "<li class={id}><span class=count id=count-{id}>{count}</span> {label}</li>"
            )?;
        }
        writeln!(out, "</ul></section>")?;
        self.timeline(out)?;
        writeln!(
            out,
            "<script nonce={}>{SCRIPT}</script>\n</body>\n</html>",
            self.nonce
        )
    }

    /// Bars: expired, each of the next [`TIMELINE_MONTHS`] months, later.
    fn timeline(&self, out: &mut impl Write) -> io::Result<()> {
        let expired = self.counts[0];
        let mut bars = vec![("expired".to_string(), "expired".to_string(), expired, "x")];
        let (year, month) = (self.now.year(), self.now.month0() as i32);
        for (offset, count) in self.months.iter().enumerate() {
            let (y, m) = (
                year + (month + offset as i32) / 12,
                (month + offset as i32) % 12,
            );
            let label = format!("{} &#8217;{:02}", MONTHS[m as usize], y.rem_euclid(100));
            bars.push((label, format!("{y}-{:02}", m + 1), *count, "m"));
        }
        bars.push(("later".into(), "later".into(), self.beyond_timeline, "l"));
        let highest = bars.iter().map(|b| b.2).max().unwrap_or(0).max(1);
        let (width, plot_top, plot_bottom) = (40u64, 20u64, 180u64);
        let total_width = width * bars.len() as u64;
        write!(
            out,
            "<section id=timeline><h2>Expiries by month</h2>\
             <svg role=img aria-labelledby=timeline-title viewBox=\"0 0 {total_width} 215\" width=\"100%\">\
             <title id=timeline-title>Credentials by the month they expire in, from this month; expired and later ones at the ends</title>"
        )?;
        for (index, (label, key, count, class)) in bars.iter().enumerate() {
            let x = index as u64 * width;
            let height = (plot_bottom - plot_top) * count / highest;
            let y = plot_bottom - height;
            write!(
                out,
                "<g class={class}><rect data-month={key} data-count={count} x={} y={y} width={} height={height}><title>{label}: {count}</title></rect>",
                x + 4,
                width - 8
            )?;
            if *count > 0 {
                write!(
                    out,
                    "<text x={} y={} class=v>{count}</text>",
                    x + width / 2,
                    y - 4
                )?;
            }
            write!(
                out,
                "<text x={} y=198 class=t>{label}</text></g>",
                x + width / 2
            )?;
        }
        writeln!(
            out,
            "<line x1=0 x2={total_width} y1={plot_bottom} y2={plot_bottom} class=axis /></svg></section>"
        )
    }
}

/// Months from `now`'s month to `end`'s (0: this month); `None` when before it.
fn months_from(now: DateTime<Utc>, end: DateTime<Utc>) -> Option<usize> {
    let months = (end.year() - now.year()) * 12 + end.month0() as i32 - now.month0() as i32;
    usize::try_from(months).ok()
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Table headings and how the script compares their cells.
const COLUMNS: [(&str, &str); 9] = [
    ("Days left", "number"),
    ("Expires (UTC)", "text"),
    ("Status", "text"),
    ("Application", "text"),
    ("Application (client) ID", "text"),
    ("Type", "text"),
    ("keyId", "text"),
    ("Name", "text"),
    ("Managed by entra-rotator", "text"),
];

/// Text as HTML text or a quoted attribute value.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

const STYLE: &str = "\
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1400px;padding:0 16px 32px;color:#1b1f24;display:flex;flex-direction:column}\
header{order:0}#summary{order:1}#timeline{order:2}#credentials{order:3}\
h1{font-size:22px;margin:20px 0 4px}h2{font-size:17px;margin:20px 0 8px}header p,.hint{color:#57606a;margin:0 0 8px}\
.cards{display:flex;flex-wrap:wrap;gap:12px;list-style:none;padding:0;margin:0}\
.cards li{border:1px solid #d0d7de;border-left-width:6px;border-radius:6px;padding:10px 16px;min-width:150px}\
.cards .count{display:block;font-size:28px;font-weight:600}\
.cards .expired{border-left-color:#c62828}.cards .within-30-days{border-left-color:#ef6c00}\
.cards .within-90-days{border-left-color:#f9a825}.cards .later{border-left-color:#2e7d32}.cards .no-expiry{border-left-color:#8c959f}\
.incomplete{background:#ffebe9;border:1px solid #c62828;padding:8px 12px;border-radius:6px;font-weight:600}\
svg{max-width:1040px;display:block}svg .x rect{fill:#c62828}svg .m rect{fill:#1f6feb}svg .l rect{fill:#8c959f}\
svg text{font-size:10px;text-anchor:middle;fill:#1b1f24}svg .v{font-weight:600}svg .axis{stroke:#8c959f}\
table{border-collapse:collapse;width:100%;font-size:13px}th,td{border-bottom:1px solid #d8dee4;padding:4px 8px;text-align:left;vertical-align:top}\
td:nth-child(5),td:nth-child(7){font-family:ui-monospace,monospace;font-size:12px}td:first-child{text-align:right;font-weight:600}td{overflow-wrap:anywhere}td:nth-child(2),td:nth-child(3),td:nth-child(6){white-space:nowrap}\
th{position:sticky;top:0;background:#f6f8fa}th button{all:unset;cursor:pointer;font-weight:600}\
th[aria-sort=ascending] button::after{content:' \\25B2'}th[aria-sort=descending] button::after{content:' \\25BC'}\
tr.x td:first-child{color:#fff;background:#c62828}tr.s td:first-child{background:#ffd8b5}tr.q td:first-child{background:#fff1a8}\
td:nth-child(9){color:#1a7f37;font-weight:600}\
";

/// Sorts the table by a column (stable; numbers as numbers, `-` last), and by days left
/// once the page has loaded, so the soonest expiry is on top.
const SCRIPT: &str = "\
(function(){\
var table=document.getElementById('credentials-table'),body=table.tBodies[0],heads=table.tHead.rows[0].cells;\
function key(row,i,numeric){var t=row.cells[i].textContent;if(!numeric)return t.toLowerCase();var n=parseFloat(t);return isNaN(n)?Infinity:n;}\
function sort(i,descending){\
var numeric=heads[i].getAttribute('data-type')==='number',rows=Array.prototype.slice.call(body.rows);\
var keyed=rows.map(function(r,p){return [key(r,i,numeric),p,r];});\
keyed.sort(function(a,b){var o=a[0]<b[0]?-1:a[0]>b[0]?1:0;return (descending?-o:o)||a[1]-b[1];});\
var f=document.createDocumentFragment();keyed.forEach(function(k){f.appendChild(k[2]);});body.appendChild(f);\
for(var j=0;j<heads.length;j++)heads[j].removeAttribute('aria-sort');\
heads[i].setAttribute('aria-sort',descending?'descending':'ascending');}\
Array.prototype.forEach.call(heads,function(h,i){h.querySelector('button').addEventListener('click',function(){sort(i,h.getAttribute('aria-sort')==='ascending');});});\
sort(0,false);\
})();";

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn text_is_escaped_for_text_and_attributes() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
        assert_eq!(escape("Contoso mail"), "Contoso mail");
    }

    #[test]
    fn buckets_follow_whole_days_left() {
        assert_eq!(
            Bucket::of(Status::Expired, Some(0)),
            Bucket::Expired,
            "expired hours ago: 0 days, still expired"
        );
        assert_eq!(Bucket::of(Status::Expiring, Some(29)), Bucket::Within30Days);
        assert_eq!(Bucket::of(Status::Ok, Some(30)), Bucket::Within90Days);
        assert_eq!(Bucket::of(Status::Ok, Some(89)), Bucket::Within90Days);
        assert_eq!(Bucket::of(Status::Ok, Some(90)), Bucket::Later);
        assert_eq!(Bucket::of(Status::NoExpiry, None), Bucket::NoExpiry);
    }

    #[test]
    fn months_count_calendar_months_from_now() {
        let now = Utc.with_ymd_and_hms(2026, 12, 2, 5, 0, 0).unwrap();
        assert_eq!(
            months_from(now, Utc.with_ymd_and_hms(2026, 12, 31, 0, 0, 0).unwrap()),
            Some(0)
        );
        assert_eq!(
            months_from(now, Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()),
            Some(1)
        );
        assert_eq!(
            months_from(now, Utc.with_ymd_and_hms(2028, 11, 30, 0, 0, 0).unwrap()),
            Some(23)
        );
        assert_eq!(
            months_from(now, Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap()),
            None
        );
    }
}
