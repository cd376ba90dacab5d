//! What a client presents: the `Authorization` header (Basic, Bearer) and login form bodies
//! (JSON or urlencoded); pure: no IO, never checks a password or a token.

use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;

/// Longest `Authorization` header value accepted, in bytes.
pub const AUTHORIZATION_BYTES_MAX: usize = 4096;

/// Longest login body accepted, in bytes. The caller must stop reading the body past this (and
/// answer 413) before calling [`parse_login`]; `parse_login` also rejects longer bodies.
pub const LOGIN_BODY_BYTES_MAX: usize = 8 * 1024;

/// Standard base64 for Basic credentials; padding optional because some clients drop it.
const BASIC_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Credentials from an `Authorization` header.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials<'a> {
    /// RFC 7617: user-id and password, split at the first ':'.
    Basic { user: String, password: String },
    /// RFC 6750: the token68 as sent.
    Bearer(&'a str),
}

impl fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { user, .. } => write!(f, "Basic {{ user: {user:?}, password: _ }}"),
            Credentials::Bearer(_) => write!(f, "Bearer(_)"),
        }
    }
}

/// Parses an `Authorization` header value. Ok(None) for a scheme other than Basic or Bearer
/// (or an empty value); Err for a malformed Basic or Bearer value or one over
/// [`AUTHORIZATION_BYTES_MAX`].
pub fn from_authorization<'a>(value: &'a [u8]) -> Result<Option<Credentials<'a>>, &'static str> {
    if value.len() > AUTHORIZATION_BYTES_MAX {
        return Err("authorization header too long");
    }
    let value = trim_ows(value);
    let scheme_len = value.iter().position(|&b| is_ows(b)).unwrap_or(value.len());
    let (scheme, rest) = value.split_at(scheme_len);
    let param = trim_ows(rest);
    if scheme.eq_ignore_ascii_case(b"basic") {
        parse_basic(param).map(Some)
    } else if scheme.eq_ignore_ascii_case(b"bearer") {
        parse_bearer(param).map(Some)
    } else {
        Ok(None)
    }
}

fn parse_basic(param: &[u8]) -> Result<Credentials<'static>, &'static str> {
    if param.is_empty() {
        return Err("basic credentials missing");
    }
    let decoded = BASIC_BASE64
        .decode(param)
        .map_err(|_| "basic credentials are not valid base64")?;
    let text = String::from_utf8(decoded).map_err(|_| "basic credentials are not UTF-8")?;
    let Some((user, password)) = text.split_once(':') else {
        return Err("basic credentials lack ':'");
    };
    if user.is_empty() {
        return Err("basic credentials have an empty user");
    }
    Ok(Credentials::Basic {
        user: user.to_string(),
        password: password.to_string(),
    })
}

fn parse_bearer(param: &[u8]) -> Result<Credentials<'_>, &'static str> {
    if param.is_empty() {
        return Err("bearer token missing");
    }
    if !is_token68(param) {
        return Err("bearer token is not a token68");
    }
    let token = std::str::from_utf8(param).map_err(|_| "bearer token is not a token68")?;
    Ok(Credentials::Bearer(token))
}

/// RFC 9110 §11.2: `token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_token68(bytes: &[u8]) -> bool {
    let body_len = bytes.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    let is_char = |&b: &u8| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
    body_len > 0 && bytes[..body_len].iter().all(is_char)
}

fn is_ows(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| !is_ows(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// A username and password from a login request body.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct LoginForm {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for LoginForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LoginForm {{ username: {:?}, password: _ }}",
            self.username
        )
    }
}

enum BodyKind {
    Json,
    Form,
}

/// Parses a login body by its `Content-Type`: `application/json` (an object with string fields
/// `username` and `password`; other fields ignored) or `application/x-www-form-urlencoded`
/// (fields `username` and `password`, each at most once). With no content type, a body whose
/// first non-whitespace byte is '{' is JSON, anything else a form.
pub fn parse_login(content_type: Option<&[u8]>, body: &[u8]) -> Result<LoginForm, &'static str> {
    if body.len() > LOGIN_BODY_BYTES_MAX {
        return Err("login body too large");
    }
    let form = match body_kind(content_type, body)? {
        BodyKind::Json => parse_login_json(body)?,
        BodyKind::Form => parse_login_form(body)?,
    };
    if form.username.is_empty() {
        return Err("empty username");
    }
    Ok(form)
}

fn body_kind(content_type: Option<&[u8]>, body: &[u8]) -> Result<BodyKind, &'static str> {
    let Some(content_type) = content_type else {
        return Ok(if first_non_whitespace(body) == Some(b'{') {
            BodyKind::Json
        } else {
            BodyKind::Form
        });
    };
    let media_type_len = content_type
        .iter()
        .position(|&b| b == b';')
        .unwrap_or(content_type.len());
    let media_type = trim_ows(&content_type[..media_type_len]);
    if media_type.eq_ignore_ascii_case(b"application/json") {
        Ok(BodyKind::Json)
    } else if media_type.eq_ignore_ascii_case(b"application/x-www-form-urlencoded") {
        Ok(BodyKind::Form)
    } else {
        Err("unsupported content type")
    }
}

/// serde would also accept a JSON array `["name", "pw"]` for the struct, so the body must open
/// with '{'; serde's derive rejects duplicate keys.
fn parse_login_json(body: &[u8]) -> Result<LoginForm, &'static str> {
    const NOT_OBJECT: &str = "login body is not a JSON object with string username and password";
    if first_non_whitespace(body) != Some(b'{') {
        return Err(NOT_OBJECT);
    }
    serde_json::from_slice(body).map_err(|_| NOT_OBJECT)
}

fn first_non_whitespace(body: &[u8]) -> Option<u8> {
    body.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// Form fields are percent-decoded as UTF-8; a field that fails to decode would be silently
/// replaced by U+FFFD, so any U+FFFD in username or password is rejected instead.
fn parse_login_form(body: &[u8]) -> Result<LoginForm, &'static str> {
    let mut username = None;
    let mut password = None;
    for (key, value) in form_urlencoded::parse(body) {
        let slot = match key.as_ref() {
            "username" => &mut username,
            "password" => &mut password,
            _ => continue,
        };
        if slot.is_some() {
            return Err("duplicate login form field");
        }
        if value.contains('\u{FFFD}') {
            return Err("login form field is not UTF-8");
        }
        *slot = Some(value.into_owned());
    }
    Ok(LoginForm {
        username: username.ok_or("login form lacks username")?,
        password: password.ok_or("login form lacks password")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    fn basic(user: &str, password: &str) -> Credentials<'static> {
        Credentials::Basic {
            user: user.to_string(),
            password: password.to_string(),
        }
    }

    fn check(value: &[u8], expected: Result<Option<Credentials<'_>>, &str>) {
        assert_eq!(
            from_authorization(value),
            expected,
            "{:?}",
            String::from_utf8_lossy(value)
        );
    }

    fn basic_header(raw: &[u8]) -> Vec<u8> {
        format!("Basic {}", STANDARD.encode(raw)).into_bytes()
    }

    #[test]
    fn basic_table() {
        check(
            b"Basic YWxpY2U6c2VjcmV0",
            Ok(Some(basic("alice", "secret"))),
        );
        check(
            b"basic YWxpY2U6c2VjcmV0",
            Ok(Some(basic("alice", "secret"))),
        );
        check(
            b"BASIC YWxpY2U6c2VjcmV0",
            Ok(Some(basic("alice", "secret"))),
        );
        check(
            b"bAsIc   YWxpY2U6c2VjcmV0  ",
            Ok(Some(basic("alice", "secret"))),
        );
        check(
            b"Basic\tYWxpY2U6c2VjcmV0",
            Ok(Some(basic("alice", "secret"))),
        );
        check(
            &basic_header(b"alice:pa:ss"),
            Ok(Some(basic("alice", "pa:ss"))),
        );
        check(&basic_header(b"alice:"), Ok(Some(basic("alice", ""))));
        check(
            &basic_header("émile:pässword".as_bytes()),
            Ok(Some(basic("émile", "pässword"))),
        );
        // "a:b" is "YTpi"; "ab:c" is "YWI6Yw==" and also accepted unpadded.
        check(b"Basic YWI6Yw==", Ok(Some(basic("ab", "c"))));
        check(b"Basic YWI6Yw", Ok(Some(basic("ab", "c"))));
        check(
            &basic_header(b":secret"),
            Err("basic credentials have an empty user"),
        );
        check(&basic_header(b"alice"), Err("basic credentials lack ':'"));
        check(&basic_header(b""), Err("basic credentials missing"));
        check(
            &basic_header(b"al\xffce:x"),
            Err("basic credentials are not UTF-8"),
        );
        check(b"Basic", Err("basic credentials missing"));
        check(b"Basic   ", Err("basic credentials missing"));
        check(b"Basic !!!!", Err("basic credentials are not valid base64"));
        check(
            b"Basic YWxp Y2U6",
            Err("basic credentials are not valid base64"),
        );
        check(b"Basic YWI6Yw=", Ok(Some(basic("ab", "c"))));
        check(
            b"Basic YWI6Yw===",
            Err("basic credentials are not valid base64"),
        );
    }

    #[test]
    fn bearer_table() {
        check(
            b"Bearer pc_abc-DEF",
            Ok(Some(Credentials::Bearer("pc_abc-DEF"))),
        );
        check(
            b"bearer a.b~c+d/e",
            Ok(Some(Credentials::Bearer("a.b~c+d/e"))),
        );
        check(b"BEARER  abc==  ", Ok(Some(Credentials::Bearer("abc=="))));
        check(b"Bearer", Err("bearer token missing"));
        check(b"Bearer ", Err("bearer token missing"));
        check(b"Bearer ===", Err("bearer token is not a token68"));
        check(b"Bearer a=b", Err("bearer token is not a token68"));
        check(b"Bearer a b", Err("bearer token is not a token68"));
        check(b"Bearer a,b", Err("bearer token is not a token68"));
        check(b"Bearer \xc3\xa9", Err("bearer token is not a token68"));
        check(b"Bearer a\"b", Err("bearer token is not a token68"));
    }

    #[test]
    fn other_schemes_table() {
        check(b"", Ok(None));
        check(b"   ", Ok(None));
        check(b"Digest username=\"a\"", Ok(None));
        check(b"Negotiate abc", Ok(None));
        check(b"Basicx YWxpY2U6c2VjcmV0", Ok(None));
        check(b"Bearerx abc", Ok(None));
        check(b"YWxpY2U6c2VjcmV0", Ok(None));
    }

    #[test]
    fn authorization_length_bound() {
        let header_of_len = |len: usize| {
            let mut value = b"Bearer ".to_vec();
            value.resize(len, b'a');
            value
        };
        let at_max = header_of_len(AUTHORIZATION_BYTES_MAX);
        let over_max = header_of_len(AUTHORIZATION_BYTES_MAX + 1);
        assert!(matches!(
            from_authorization(&header_of_len(AUTHORIZATION_BYTES_MAX - 1)),
            Ok(Some(_))
        ));
        assert!(matches!(from_authorization(&at_max), Ok(Some(_))));
        check(&over_max, Err("authorization header too long"));
        let unknown = vec![b'x'; AUTHORIZATION_BYTES_MAX + 1];
        check(&unknown, Err("authorization header too long"));
    }

    #[test]
    fn debug_hides_secrets() {
        let text = format!(
            "{:?} {:?}",
            basic("alice", "hunter2"),
            Credentials::Bearer("pc_x")
        );
        assert!(text.contains("alice") && !text.contains("hunter2") && !text.contains("pc_x"));
        let form = LoginForm {
            username: "alice".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{form:?}").contains("hunter2"));
    }

    fn login(username: &str, password: &str) -> Result<LoginForm, &'static str> {
        Ok(LoginForm {
            username: username.to_string(),
            password: password.to_string(),
        })
    }

    fn check_login(content_type: Option<&str>, body: &str, expected: Result<LoginForm, &str>) {
        let got = parse_login(content_type.map(str::as_bytes), body.as_bytes());
        assert_eq!(got, expected, "{content_type:?} {body:?}");
    }

    #[test]
    fn login_json_table() {
        let json = Some("application/json");
        check_login(
            json,
            r#"{"username":"alice","password":"pw"}"#,
            login("alice", "pw"),
        );
        check_login(
            json,
            r#"{"password":"pw","username":"alice","remember":true}"#,
            login("alice", "pw"),
        );
        check_login(
            json,
            r#" {"username":"a\u00e9","password":""} "#,
            login("aé", ""),
        );
        check_login(
            Some("Application/JSON; charset=utf-8"),
            r#"{"username":"a","password":"b"}"#,
            login("a", "b"),
        );
        check_login(
            Some(" application/json ;charset=UTF-8"),
            r#"{"username":"a","password":"b"}"#,
            login("a", "b"),
        );
        let not_object = Err("login body is not a JSON object with string username and password");
        check_login(json, r#"{"username":"alice"}"#, not_object.clone());
        check_login(json, r#"{"password":"pw"}"#, not_object.clone());
        check_login(
            json,
            r#"{"username":1,"password":"pw"}"#,
            not_object.clone(),
        );
        check_login(
            json,
            r#"{"username":"a","password":null}"#,
            not_object.clone(),
        );
        check_login(json, r#"["alice","pw"]"#, not_object.clone());
        check_login(json, r#""alice""#, not_object.clone());
        check_login(
            json,
            r#"{"username":"a","username":"b","password":"c"}"#,
            not_object.clone(),
        );
        check_login(json, "username=alice&password=pw", not_object.clone());
        check_login(json, "", not_object.clone());
        check_login(json, r#"{"username":"a","password":"b"} x"#, not_object);
        check_login(
            json,
            r#"{"username":"","password":"pw"}"#,
            Err("empty username"),
        );
    }

    #[test]
    fn login_form_table() {
        let form = Some("application/x-www-form-urlencoded");
        check_login(form, "username=alice&password=pw", login("alice", "pw"));
        check_login(
            form,
            "password=p%26w%3D&username=al+ice&x=1",
            login("al ice", "p&w="),
        );
        check_login(form, "username=%C3%A9&password=", login("é", ""));
        check_login(
            Some("APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8"),
            "username=a&password=b",
            login("a", "b"),
        );
        check_login(
            form,
            "username=a&username=b&password=c",
            Err("duplicate login form field"),
        );
        check_login(
            form,
            "username=a&password=b&password=c",
            Err("duplicate login form field"),
        );
        check_login(form, "username=a", Err("login form lacks password"));
        check_login(form, "password=a", Err("login form lacks username"));
        check_login(form, "", Err("login form lacks username"));
        check_login(form, "username=&password=pw", Err("empty username"));
        check_login(
            form,
            "username=a&password=%FF",
            Err("login form field is not UTF-8"),
        );
        check_login(
            form,
            "username=%FF&password=a",
            Err("login form field is not UTF-8"),
        );
        check_login(
            form,
            r#"{"username":"a","password":"b"}"#,
            Err("login form lacks username"),
        );
    }

    #[test]
    fn login_content_type_table() {
        let body = r#"{"username":"a","password":"b"}"#;
        check_login(None, body, login("a", "b"));
        check_login(None, &format!("\n  {body}"), login("a", "b"));
        check_login(None, "username=a&password=b", login("a", "b"));
        check_login(None, "", Err("login form lacks username"));
        check_login(
            None,
            "{",
            Err("login body is not a JSON object with string username and password"),
        );
        check_login(
            Some("text/plain"),
            "username=a&password=b",
            Err("unsupported content type"),
        );
        check_login(
            Some("multipart/form-data; boundary=x"),
            "",
            Err("unsupported content type"),
        );
        check_login(
            Some("application/json-seq"),
            body,
            Err("unsupported content type"),
        );
        check_login(
            Some("application/jsonx"),
            body,
            Err("unsupported content type"),
        );
        check_login(Some(""), body, Err("unsupported content type"));
    }

    #[test]
    fn login_body_bound() {
        let body_of_len = |len: usize| {
            let mut body = "username=a&password=".to_string();
            let fill = len - body.len();
            body.push_str(&"p".repeat(fill));
            body
        };
        let form = Some("application/x-www-form-urlencoded");
        let ok = |len: usize| parse_login(form.map(str::as_bytes), body_of_len(len).as_bytes());
        assert!(ok(LOGIN_BODY_BYTES_MAX - 1).is_ok());
        assert!(ok(LOGIN_BODY_BYTES_MAX).is_ok());
        assert_eq!(ok(LOGIN_BODY_BYTES_MAX + 1), Err("login body too large"));
    }
}
