//! Reads scenario files (TOML) and builds the request mix a connection draws from; never does IO past reading files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::limits;
use crate::request::{RequestSpec, Template};

/// The requests a run sends: templates, a weighted draw table, and the per-connection session.
#[derive(Clone, Debug)]
pub struct Mix {
    pub templates: Vec<Template>,
    /// One template index per unit of weight; a connection draws uniformly from it.
    pub table: Vec<u16>,
    /// Template sent once on every new connection before any other request.
    pub login: Option<u16>,
    /// Keep `Set-Cookie` values per connection and send them back as `Cookie`.
    pub cookies: bool,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    session: Option<SessionSection>,
    #[serde(default)]
    request: Vec<RequestEntry>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct SessionSection {
    login: Option<RequestEntry>,
    #[serde(default = "yes")]
    cookies: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RequestEntry {
    name: Option<String>,
    method: Option<String>,
    path: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    body_file: Option<PathBuf>,
    weight: Option<u32>,
}

/// One request, repeated: what the flags describe when there is no scenario.
pub fn single(spec: RequestSpec, authority: &str) -> Result<Mix, String> {
    let template = Template::new(&spec, authority)?;
    Ok(Mix {
        templates: vec![template],
        table: vec![0],
        login: None,
        cookies: false,
    })
}

/// Loads a scenario. Paths default to the URL's path; `extra_headers` (from `-H`) go on every request.
pub fn load(
    path: &Path,
    authority: &str,
    default_path: &str,
    extra_headers: &[(String, String)],
) -> Result<Mix, String> {
    let text = read_bounded(path, limits::SCENARIO_FILE_BYTES_MAX)
        .and_then(|bytes| String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string()))
        .map_err(|e| format!("bad scenario file {}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base, authority, default_path, extra_headers)
        .map_err(|e| format!("bad scenario file {}: {e}", path.display()))
}

fn parse(
    text: &str,
    base: &Path,
    authority: &str,
    default_path: &str,
    extra_headers: &[(String, String)],
) -> Result<Mix, String> {
    let file: ScenarioFile = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    if file.request.is_empty() {
        return Err("no [[request]] entries".into());
    }
    if file.request.len() > limits::SCENARIO_REQUESTS_MAX {
        return Err(format!(
            "more than {} requests",
            limits::SCENARIO_REQUESTS_MAX
        ));
    }
    let mut templates = Vec::new();
    let mut table = Vec::new();
    let mut weight_sum: u32 = 0;
    for (index, entry) in file.request.iter().enumerate() {
        let weight = entry.weight.unwrap_or(1);
        weight_sum = weight_sum.saturating_add(weight);
        if weight == 0 || weight_sum > limits::SCENARIO_WEIGHT_SUM_MAX {
            return Err(format!(
                "request {index}: weights must be >= 1 and sum to at most {}",
                limits::SCENARIO_WEIGHT_SUM_MAX
            ));
        }
        let spec = spec_of(entry, base, default_path, extra_headers)
            .map_err(|e| format!("request {index}: {e}"))?;
        if let Some(first) = templates
            .iter()
            .position(|t: &Template| t.name == spec.name)
        {
            return Err(duplicate_name(&spec.name, first, index));
        }
        templates
            .push(Template::new(&spec, authority).map_err(|e| format!("request {index}: {e}"))?);
        table.extend(std::iter::repeat_n(index as u16, weight as usize));
    }
    let (login, cookies) = match &file.session {
        None => (None, false),
        Some(session) => {
            let login = match &session.login {
                Some(entry) => {
                    let mut spec = spec_of(entry, base, default_path, extra_headers)
                        .map_err(|e| format!("session.login: {e}"))?;
                    if entry.name.is_none() {
                        spec.name = "login".into();
                    }
                    if templates.iter().any(|t| t.name == spec.name) {
                        return Err(format!(
                            "session.login: name {:?} is also a [[request]]'s; counts per name would merge",
                            spec.name
                        ));
                    }
                    templates.push(
                        Template::new(&spec, authority)
                            .map_err(|e| format!("session.login: {e}"))?,
                    );
                    Some((templates.len() - 1) as u16)
                }
                None => None,
            };
            (login, session.cookies)
        }
    };
    Ok(Mix {
        templates,
        table,
        login,
        cookies,
    })
}

/// Counts per request name are reported (`requests_by_name`), so a name used twice would merge
/// two requests' counts: refused, naming the name.
fn duplicate_name(name: &str, first: usize, second: usize) -> String {
    format!(
        "requests {first} and {second} are both named {name:?} (unnamed requests are named \"METHOD path\"); give each a unique name"
    )
}

/// One line for a TOML error: its line, the key on that line, and the message (the `Display`
/// of `toml::de::Error` spans several lines, with a drawing of the spot).
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let line_index = text[..start].matches('\n').count();
    let line = text.lines().nth(line_index).unwrap_or("").trim();
    let key = match line.split_once('=') {
        Some((key, _)) => key.trim(),
        None => line,
    };
    if key.is_empty() {
        format!("line {}: {message}", line_index + 1)
    } else {
        format!("line {} ({key}): {message}", line_index + 1)
    }
}

fn spec_of(
    entry: &RequestEntry,
    base: &Path,
    default_path: &str,
    extra_headers: &[(String, String)],
) -> Result<RequestSpec, String> {
    let method = entry.method.clone().unwrap_or_else(|| "GET".into());
    let path = entry.path.clone().unwrap_or_else(|| default_path.into());
    let body = match (&entry.body, &entry.body_file) {
        (Some(_), Some(_)) => return Err("give body or body_file, not both".into()),
        (Some(body), None) => body.clone().into_bytes(),
        (None, Some(file)) => read_body(&base.join(file))?,
        (None, None) => Vec::new(),
    };
    let mut headers = extra_headers.to_vec();
    headers.extend(entry.headers.iter().map(|(n, v)| (n.clone(), v.clone())));
    let name = entry
        .name
        .clone()
        .unwrap_or_else(|| format!("{method} {path}"));
    Ok(RequestSpec {
        name,
        method,
        path,
        headers,
        body,
    })
}

/// Reads a request body file, refusing one over `REQUEST_BODY_BYTES_MAX`.
pub fn read_body(path: &Path) -> Result<Vec<u8>, String> {
    read_bounded(path, limits::REQUEST_BODY_BYTES_MAX)
        .map_err(|e| format!("body file {}: {e}", path.display()))
}

/// The whole file, if it holds at most `bytes_max` bytes. The read itself is bounded, not only
/// the size the file claims: a device or a pipe claims 0 (found in review: `--body /dev/zero`
/// read until the memory ran out).
fn read_bounded(path: &Path, bytes_max: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let too_big = || format!("over {bytes_max} bytes");
    if file
        .metadata()
        .is_ok_and(|meta| meta.len() > bytes_max as u64)
    {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    file.take(bytes_max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() > bytes_max {
        return Err(too_big());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<(usize, usize, Option<u16>, bool), &str>) {
        let got = parse(text, Path::new("."), "h:1", "/d", &[])
            .map(|m| (m.templates.len(), m.table.len(), m.login, m.cookies));
        match expected {
            Ok(e) => assert_eq!(got, Ok(e), "{text}"),
            Err(fragment) => assert!(
                got.as_ref().is_err_and(|e| e.contains(fragment)),
                "{text}: {got:?}"
            ),
        }
    }

    #[test]
    fn scenarios() {
        check("[[request]]\n", Ok((1, 1, None, false)));
        check(
            "[[request]]\nweight = 3\n[[request]]\nmethod = \"POST\"\nbody = \"x\"\n",
            Ok((2, 4, None, false)),
        );
        check(
            "[session.login]\nmethod = \"POST\"\npath = \"/login\"\n[[request]]\npath = \"/me\"\n",
            Ok((2, 1, Some(1), true)),
        );
        check(
            "[session]\ncookies = false\n[[request]]\n",
            Ok((1, 1, None, false)),
        );
        check("", Err("no [[request]]"));
        check("[[request]]\nweight = 0\n", Err("weights"));
        check("[[request]]\nbogus = 1\n", Err("unknown field"));
        check("[[request]]\npath = \"nope\"\n", Err("path"));
        check(
            "[[request]]\nbody = \"a\"\nbody_file = \"b\"\n",
            Err("not both"),
        );
        check(
            "[[request]]\nbody_file = \"/nonexistent/x\"\n",
            Err("body file"),
        );
        check("this is not toml", Err("line 1 (this is not toml): "));
    }

    /// Regression (review item 9): a type error named neither the key nor the line.
    #[test]
    fn errors_name_line_and_key() {
        check(
            "[[request]]\npath = \"/a\"\nweight = \"9\"\n",
            Err("line 3 (weight): invalid type: string \"9\", expected u32"),
        );
        check("[[request]]\nweight = \n", Err("line 2 (weight): "));
        let error = parse("x = [\n", Path::new("."), "h:1", "/d", &[]).unwrap_err();
        assert!(!error.contains('\n'), "{error}");
    }

    /// Regression (review item 6): counts per name merged when two requests shared a name.
    #[test]
    fn duplicate_names_are_refused() {
        check(
            "[[request]]\nname = \"a\"\npath = \"/x\"\n[[request]]\nname = \"a\"\npath = \"/y\"\n",
            Err("requests 0 and 1 are both named \"a\""),
        );
        check(
            "[[request]]\npath = \"/x\"\n[[request]]\npath = \"/x\"\nbody = \"b\"\n",
            Err("both named \"GET /x\""),
        );
        check(
            "[session.login]\npath = \"/l\"\n[[request]]\nname = \"login\"\n",
            Err("session.login: name \"login\""),
        );
        check(
            "[[request]]\npath = \"/x\"\n[[request]]\npath = \"/y\"\n",
            Ok((2, 2, None, false)),
        );
    }

    #[test]
    fn requests_at_the_bound_and_one_past_it() {
        let max = limits::SCENARIO_REQUESTS_MAX;
        let named = |n: usize| -> String {
            (0..n)
                .map(|i| format!("[[request]]\nname = \"r{i}\"\n"))
                .collect()
        };
        check(&named(max), Ok((max, max, None, false)));
        check(&named(max + 1), Err(&format!("more than {max} requests")));
    }
}
