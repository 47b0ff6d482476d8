//! The one JSON result line a benchmark program prints on stdout, read back.

use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Runs `cmd` to the end and returns the last line of its stdout that is a JSON object; fails
/// with its stderr when it fails.
pub(crate) fn run_for_json(mut cmd: Command) -> Result<Value> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .find(Value::is_object)
        .with_context(|| format!("{cmd:?} printed no JSON result line: {text}"))
}

/// `value[key]` as a number.
pub(crate) fn number(value: &Value, key: &str) -> Result<f64> {
    value
        .get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("no number `{key}` in {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_last_json_object_line() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            r#"echo '{"a": 1}'; echo 'log line'; echo '{"views_per_s": 2.5}'; echo 3"#,
        ]);
        let v = run_for_json(cmd).unwrap();
        assert_eq!(number(&v, "views_per_s").unwrap(), 2.5);
        assert!(number(&v, "a").is_err());
    }

    #[test]
    fn a_failing_command_is_an_error_with_its_stderr() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo broken >&2; exit 3"]);
        let e = run_for_json(cmd).unwrap_err().to_string();
        assert!(e.contains("broken"), "{e}");
    }
}
