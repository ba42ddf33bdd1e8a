use super::*;
use crate::error::{Code, Fail};

#[test]
fn quoting() {
    assert_eq!(quote("abc/d-e_f.g"), "abc/d-e_f.g");
    assert_eq!(quote(""), "''");
    assert_eq!(quote("a b"), "'a b'");
    assert_eq!(quote("it's"), r"'it'\''s'");
    assert_eq!(quote("$HOME"), "'$HOME'");
    assert_eq!(quote("*.cache"), "'*.cache'");
    assert_eq!(quote("--exclude=x"), "--exclude=x");
    assert_eq!(quote("a\nb"), "'a\nb'");
}

#[test]
fn render_with_var_env_and_codes() {
    let c = Cmd::new("cryptsetup")
        .env("LANG", "C")
        .arg("open")
        .arg(Arg::Var("loop"))
        .arg("e2e-my job")
        .ok_code(24);
    assert_eq!(c.render(), "LANG=C cryptsetup open \"$loop\" 'e2e-my job'");
    assert_eq!(
        c.script_line(),
        "LANG=C cryptsetup open \"$loop\" 'e2e-my job' || case $? in 24) ;; *) false ;; esac"
    );
}

/// A step that keeps making progress outlives the limit; one that makes none is killed.
#[test]
fn deadline_moves_with_progress() {
    let r = Runner::new(false, false);
    let ticks = std::cell::Cell::new(0u64);
    let moving = || {
        ticks.set(ticks.get() + 1);
        Some(ticks.get())
    };
    let t = Instant::now();
    let (two, ten) = (Duration::from_secs(2), Duration::from_secs(10));
    let out = r.run_until_stalled(&Cmd::new("sleep").arg("3"), two, ten, &moving);
    assert!(out.unwrap().is_some(), "killed although progressing");
    assert!(t.elapsed() >= Duration::from_secs(3));
    let t = Instant::now();
    let out = r.run_until_stalled(&Cmd::new("sleep").arg("30"), two, ten, &|| Some(7));
    assert!(out.unwrap().is_none(), "a stalled step must be killed");
    assert!(t.elapsed() < Duration::from_secs(8));
    // Progress does not extend it beyond the cap.
    let t = Instant::now();
    let three = Duration::from_secs(3);
    let out = r.run_until_stalled(&Cmd::new("sleep").arg("30"), two, three, &moving);
    assert!(out.unwrap().is_none(), "the cap must hold");
    assert!(t.elapsed() < Duration::from_secs(9));
}

#[test]
fn dry_run_script() {
    let r = Runner::buffered();
    let v = r
        .capture(&Cmd::new("losetup").args(["-f", "--show", "f"]), "loop")
        .unwrap();
    r.run(&Cmd::new("losetup").arg("-d").arg(&v)).unwrap();
    r.note("done");
    assert_eq!(
        r.script(),
        vec![
            "set -e",
            "loop=$(losetup -f --show f)",
            "losetup -d \"$loop\"",
            "# done"
        ]
    );
}

#[test]
fn real_run_and_error_mapping() {
    let r = Runner::new(false, false);
    let o = r.run(&Cmd::new("sh").args(["-c", "echo hi"])).unwrap();
    assert_eq!(o.stdout, "hi\n");
    let e = r
        .run(&Cmd::new("sh").args(["-c", "echo boom >&2; exit 3"]))
        .unwrap_err();
    assert_eq!(e.to_string(), "sh failed with exit code 3: boom");
    let e = r
        .run(
            &Cmd::new("sh")
                .args(["-c", "exit 2"])
                .on_fail(|rc, _| (rc == 2).then(|| Fail::new(Code::Refused, "wrong key"))),
        )
        .unwrap_err();
    assert_eq!(crate::error::code_of(&e), Code::Refused);
    r.run(&Cmd::new("sh").args(["-c", "exit 24"]).ok_code(24))
        .unwrap();
    let e = r.run(&Cmd::new("no-such-program-e2e")).unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
}

#[test]
fn streaming_splits_on_cr() {
    let r = Runner::new(false, false);
    let mut seen = Vec::new();
    r.run_streaming(&Cmd::new("printf").arg(r"a\rb\nc"), |l| {
        seen.push(l.to_string())
    })
    .unwrap();
    assert_eq!(seen, vec!["a", "b", "c"]);
}

/// The probe of skip_unchanged: stops at the first wanted line (its process group is stopped,
/// not waited out), and cannot tell from a non-zero exit or a dry run.
#[test]
fn first_line_stops_the_probe_at_the_first_match() {
    let r = Runner::new(false, false);
    let t0 = std::time::Instant::now();
    let got = r
        .first_line(
            &Cmd::new("sh").args(["-c", "echo header; echo '>f x'; sleep 30; echo late"]),
            |l| l.starts_with('>'),
        )
        .unwrap();
    assert_eq!(got, Some(Some(">f x".to_string())));
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(20),
        "the probe was waited out"
    );
    let none = r
        .first_line(&Cmd::new("sh").args(["-c", "echo header"]), |l| {
            l.starts_with('>')
        })
        .unwrap();
    assert_eq!(none, Some(None));
    let failed = r
        .first_line(&Cmd::new("sh").args(["-c", "echo header; exit 23"]), |l| {
            l.starts_with('>')
        })
        .unwrap();
    assert_eq!(failed, None);
    // A probe that writes to stderr (closed) cannot block on it: it fails, and the run cannot tell.
    let noisy = r
        .first_line(&Cmd::new("sh").args(["-c", "yes warning >&2"]), |l| {
            l.starts_with('>')
        })
        .unwrap();
    assert_eq!(noisy, None);
    let dry = Runner::buffered();
    assert_eq!(dry.first_line(&Cmd::new("true"), |_| true).unwrap(), None);
    assert_eq!(dry.script().last().map(String::as_str), Some("true"));
}

/// A command's input reaches its stdin in a real run (also more than a pipe holds, while the
/// command writes as much), and the dry-run script's here-document gives it the same lines.
#[test]
fn input_reaches_stdin_in_a_run_and_in_the_script() {
    let mut text: String = (0..20_000).map(|i| format!("/data/{i}\n")).collect();
    text.push_str("E2E_INPUT\n"); // a line that is the first choice of delimiter
    let c = Cmd::new("tee").arg("/dev/stderr").input(text.clone());
    let out = Runner::new(false, false).run(&c).unwrap();
    assert_eq!(out.stdout, text);
    assert!(c.log_line().ends_with("<<'E2E_INPUT_' # 20001 line(s)"));
    let mut streamed = Vec::new();
    let c = Cmd::new("cat").input(text.clone());
    Runner::new(false, false)
        .run_streaming(&c, |l| streamed.push(l.to_string()))
        .unwrap();
    assert_eq!(streamed.len(), 20_001);
    let r = Runner::buffered();
    r.run(&Cmd::new("wc").arg("-l").input(text).ok_code(3))
        .unwrap();
    let script = r.script().join("\n");
    // (the script through bash's stdin: as one argument it would be too long for exec)
    let sh = Runner::new(false, false)
        .run(&Cmd::new("bash").input(script.clone()))
        .unwrap();
    assert_eq!(sh.stdout.trim(), "20001", "{script:.200}");
}

/// A captured command's input stays inside `$( )` in the script: the variable gets what the command
/// printed from it.
#[test]
fn captured_input_is_inside_the_substitution() {
    let r = Runner::buffered();
    let c = Cmd::new("tail").args(["-n", "1"]).input("a\nb\n".into());
    r.capture(&c, "last").unwrap();
    let script = format!("set -eu\n{}\necho \"<$last>\"", r.script().join("\n"));
    let sh = Runner::new(false, false)
        .run(&Cmd::new("bash").args(["-c", &script]))
        .unwrap();
    assert_eq!(sh.stdout, "<b>\n", "{script}");
    // bash takes `END)` as the delimiter too, with a warning: the delimiter must be on its own line.
    assert_eq!(sh.stderr, "", "{script}");
}
