//! The command-line contract of the real binary: exit codes, messages naming the option,
//! capabilities, help.

#![allow(clippy::unwrap_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-netd");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_input_exits_2_and_names_the_option_and_value() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--socket-path",
                "/tmp/x.sock",
                "--netdev",
                "tap,id=n0,queues=abc",
            ],
            "--netdev",
        ),
        (
            &[
                "--socket-path",
                "/tmp/x.sock",
                "--netdev",
                "tap,id=n0,fd=3,ifname=t",
            ],
            "are invalid with fd=",
        ),
        (
            &["--socket-path", "/tmp/x.sock", "--netdev", "bogus,id=n0"],
            "'bogus'",
        ),
        (
            &[
                "--socket-path",
                "/tmp/x.sock",
                "--netdev",
                "tap,id=n0",
                "--mac",
                "52:54:zz:00:00:01",
            ],
            "--mac",
        ),
        (
            &[
                "--socket-path",
                "/tmp/x.sock",
                "--netdev",
                "tap,id=n0",
                "--mtu",
                "10",
            ],
            "--mtu",
        ),
        (
            &[
                "--netdev",
                "tap,id=n0",
                "--port",
                "socket-path=/a,netdev=n9",
            ],
            "n9",
        ),
        (
            &[
                "--socket-path",
                "/tmp/x.sock",
                "--netdev",
                "user,id=u,hostfwd=foo",
            ],
            "Invalid host forwarding rule 'foo' (No : separators)",
        ),
        (&["--no-such-option"], "--no-such-option"),
        (&["--workers", "257"], "--workers"),
        (&["--workers=-1"], "--workers"),
        (&["--poll-us", "10001"], "--poll-us"),
        (
            &["--socket-path", "/a", "--fd", "3", "--netdev", "tap,id=n0"],
            "--fd",
        ),
    ];
    for (args, needle) in cases {
        let (code, _, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: stderr lacks {needle:?}: {err}"
        );
    }
}

#[test]
fn print_capabilities_is_json_and_exits_0() {
    let (code, out, _) = run(&["--print-capabilities"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["type"], "net");
}

#[test]
fn help_shows_examples() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("Examples:") && out.contains("--netdev tap,id=n0"),
        "{out}"
    );
}

#[test]
fn an_inherited_fd_that_is_not_a_listening_socket_fails_early() {
    // fd 0 is /dev/null here: not a socket.
    let out = Command::new(BIN)
        .args(["--fd", "0", "--netdev", "tap,id=n0,fd=0"])
        .stdin(std::process::Stdio::null())
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("descriptor '0'"));
}

/// `--long` option names in `text`.
fn long_options(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2 && !w.ends_with('-'))
        .map(str::to_string)
        .collect()
}

#[test]
fn man_page_and_completions_list_the_options_the_binary_accepts() {
    let (code, help, _) = run(&["--help"]);
    assert_eq!(code, 0);
    let accepted = long_options(&help);
    assert!(accepted.contains("--netdev") && accepted.contains("--print-man-page"));

    let (code, man, _) = run(&["--print-man-page"]);
    assert_eq!(code, 0);
    let dir = std::env::temp_dir().join(format!("vunetd-man-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("vhost-user-netd.1");
    std::fs::write(&page, &man).unwrap();
    // No hyphenation: an option name is never split across lines.
    let rendered = Command::new("man")
        .args(["--nh", "--nj", "-l"])
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "200")
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let rendered = rendered.expect("man (Debian's man-db)");
    assert!(rendered.status.success(), "man -l failed");
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(text.contains("OPTIONS"), "{text}");
    assert_eq!(long_options(&text), accepted, "man page options vs --help");

    for shell in ["bash", "zsh", "fish"] {
        let (code, script, err) = run(&["--print-completions", shell]);
        assert_eq!(code, 0, "{err}");
        for option in &accepted {
            assert!(
                script.contains(option.trim_start_matches('-')),
                "{shell}: {option}"
            );
        }
    }
    let (_, bash, _) = run(&["--print-completions", "bash"]);
    let check = Command::new("bash")
        .args(["-n", "-c", &bash])
        .status()
        .unwrap();
    assert!(check.success(), "bash completion does not parse");
}
