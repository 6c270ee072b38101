//! HTML of the console's pages: plain strings with every value escaped, one layout.

use std::fmt::Write;

use serde_json::Value;

use super::session::Viewer;

/// `text` safe inside HTML text and double-quoted attributes.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as table text: strings bare, null as an em dash.
pub(crate) fn text_of(value: &Value) -> String {
    match value {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.1}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// Which tab a page belongs to (marked `aria-current` in the navigation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tab {
    Overview,
    Actors,
    Jobs,
    DeadLetters,
    None,
}

/// A page: its title, tab, live JSON endpoint (polled by console.js) and body.
pub(crate) struct Page<'a> {
    pub(crate) title: &'a str,
    pub(crate) tab: Tab,
    pub(crate) poll: Option<String>,
    pub(crate) body: String,
}

/// The whole document around `page.body`, for `viewer` (None on the sign-in page).
pub(crate) fn layout(page: &Page<'_>, viewer: Option<&Viewer>) -> String {
    let tabs = [
        (Tab::Overview, "/ui", "Overview"),
        (Tab::Actors, "/ui/actors", "Actors"),
        (Tab::Jobs, "/ui/jobs", "Jobs"),
        (Tab::DeadLetters, "/ui/dlq", "Dead letters"),
    ];
    let mut nav = String::new();
    if viewer.is_some() {
        for (tab, href, label) in tabs {
            let current = if tab == page.tab {
                " aria-current=\"page\""
            } else {
                ""
            };
            let _ = write!(nav, "<a href=\"{href}\"{current}>{label}</a>");
        }
    }
    let who = viewer.map(who_block).unwrap_or_default();
    let poll = page
        .poll
        .as_deref()
        .map(|url| format!(" data-poll=\"{}\"", esc(url)))
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · reportd console</title>\
         <link rel=\"stylesheet\" href=\"/ui/assets/console.css\"></head>\
         <body{poll}><a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header><span class=\"brand\">reportd</span><nav aria-label=\"Console\">{nav}</nav>{who}</header>\
         <main id=\"main\"><h1>{title}</h1>{body}</main>\
         <script src=\"/ui/assets/console.js\"></script></body></html>",
        title = esc(page.title),
        body = page.body,
    )
}

/// "Signed in as …" and the sign-out button.
fn who_block(viewer: &Viewer) -> String {
    let out = if viewer.session.is_some() {
        format!(
            "<form method=\"post\" action=\"/ui/logout\">{}<button type=\"submit\">Sign out</button></form>",
            csrf_input(viewer)
        )
    } else {
        String::new()
    };
    format!(
        "<div class=\"who\"><span data-testid=\"who\">{} ({})</span>{out}</div>",
        esc(&viewer.name),
        viewer.role.as_str()
    )
}

/// The hidden CSRF field of a form.
pub(crate) fn csrf_input(viewer: &Viewer) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        viewer.csrf()
    )
}

/// A table with a header row; `rows` are already `<tr>…</tr>`.
pub(crate) fn table(caption: &str, headers: &[&str], rows: &str) -> String {
    live_table(caption, headers, rows, "")
}

/// A table whose body has the id `body_id` (none when empty): a live endpoint's `html`
/// map replaces the rows under that key.
pub(crate) fn live_table(caption: &str, headers: &[&str], rows: &str, body_id: &str) -> String {
    let id = if body_id.is_empty() {
        String::new()
    } else {
        format!(" id=\"{}\"", esc(body_id))
    };
    let mut head = String::new();
    for h in headers {
        let _ = write!(head, "<th scope=\"col\">{h}</th>");
    }
    format!(
        "<div class=\"scroll\"><table><caption>{}</caption><thead><tr>{head}</tr></thead><tbody{id}>{rows}</tbody></table></div>",
        esc(caption)
    )
}

/// A horizontal bar chart of `bars` (label, value), drawn on the server as SVG.
pub(crate) fn bar_chart(title: &str, bars: &[(String, i64)]) -> String {
    let max = bars.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1) as f64;
    let row_h = 24;
    let height = row_h * bars.len().max(1) + 4;
    let mut svg = format!(
        "<svg role=\"img\" aria-label=\"{}\" viewBox=\"0 0 400 {height}\" width=\"100%\" \
         preserveAspectRatio=\"xMinYMin meet\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(title)
    );
    for (i, (label, value)) in bars.iter().enumerate() {
        let y = i * row_h + 2;
        let width = (*value as f64 / max * 250.0).round();
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{}\" font-size=\"12\" fill=\"currentColor\">{}</text>\
             <rect x=\"100\" y=\"{}\" width=\"{width}\" height=\"16\" class=\"bar bar-{}\"></rect>\
             <text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"currentColor\">{value}</text>",
            y + 13,
            esc(label),
            y,
            esc(label),
            105.0 + width,
            y + 13
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A short age: `42 s`, `3 min`, `5 h`.
pub(crate) fn age(seconds: f64) -> String {
    if seconds < 120.0 {
        format!("{seconds:.0} s")
    } else if seconds < 7200.0 {
        format!("{:.0} min", seconds / 60.0)
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn ages_pick_a_readable_unit() {
        assert_eq!(age(5.0), "5 s");
        assert_eq!(age(600.0), "10 min");
        assert_eq!(age(36000.0), "10.0 h");
    }

    #[test]
    fn the_chart_has_one_bar_per_value() {
        let svg = bar_chart("jobs", &[("a".into(), 1), ("b".into(), 2)]);
        assert_eq!(svg.matches("<rect").count(), 2);
    }
}
