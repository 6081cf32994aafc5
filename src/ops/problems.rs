//! The pages a problem's `type` URI resolves to: `GET /problems/{slug}` answers a short
//! HTML page about that code, from the same table that builds the problems ([`CODES`]).

use axum::response::Html;

use crate::{
    error::{code_by_slug, AppError, CodeDoc, CODES, LINE_CODES},
    http::AppPath,
};

/// Every code, linked.
pub async fn index() -> Html<String> {
    let rows: String = CODES
        .iter()
        .map(|c| {
            format!(
                "<tr><td>{}</td><td><a href=\"{}\"><code>{}</code></a></td><td>{}</td></tr>",
                c.status,
                c.type_uri(),
                c.code,
                escape(c.title)
            )
        })
        .collect();
    page(
        "commerce-api problems",
        &format!(
            "<h1>Problem types</h1><p>Every error of this API is <code>application/problem+json</code> \
             (RFC 9457) whose <code>type</code> is one of these pages.</p><p>{LINES}</p>\
             <table><tr><th>status</th><th>code</th><th>title</th></tr>{rows}</table>"
        ),
    )
}

/// One code's page; an unknown one is a 404 problem.
pub async fn show(AppPath(slug): AppPath<String>) -> Result<Html<String>, AppError> {
    let code =
        code_by_slug(&slug).ok_or_else(|| AppError::NotFound(format!("no problem type {slug}")))?;
    Ok(describe(code))
}

/// What a refusal of an order of several products adds (SPEC L2).
const LINES: &str = "A refused order of several products names the first failing rule (in the \
     order sale window, stock, per-customer limit, price, points) with that rule's members, and \
     lists every failing line in <code>lines</code>: <code>product_id</code>, <code>code</code> and \
     that code's members; <code>lines</code> is empty when only the points for the order's total \
     fail. Nothing of such an order was reserved or held.";

fn describe(code: &CodeDoc) -> Html<String> {
    let lines = if LINE_CODES.contains(&code) || *code == crate::error::code::INSUFFICIENT_POINTS {
        format!("<p>{LINES}</p>")
    } else {
        String::new()
    };
    let members = if code.members.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = code
            .members
            .iter()
            .map(|m| format!("<code>{m}</code>"))
            .collect();
        format!(
            "<p>Members beyond the standard ones: {}.</p>",
            list.join(", ")
        )
    };
    page(
        &format!("{} — commerce-api", code.code),
        &format!(
            "<h1><code>{}</code></h1><p class=\"sub\">{} — HTTP {}</p><p>{}</p>{members}{lines}\
             <p>Every problem also carries <code>request_id</code>, the same value as the \
             <code>x-request-id</code> response header. <a href=\"/problems\">All problem types</a>.</p>",
            code.code,
            escape(code.title),
            code.status,
            escape(code.meaning)
        ),
    )
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>body{{font:15px/1.5 system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem}}\
         td,th{{padding:.2rem .6rem;text-align:left}}.sub{{color:#5b6578}}</style></head><body>{body}</body></html>",
        escape(title)
    ))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('`', "")
}
