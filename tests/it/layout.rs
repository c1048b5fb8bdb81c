//! The shape of the crate, as a newcomer relies on it: the README's "Where to look" names every module,
//! no two top-level modules import each other (directly or round a circle), and the configuration
//! imports nothing it configures.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The crate's top-level modules, from `src/lib.rs`.
fn modules() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// For each top-level module, the others its code names as `crate::X` (comments left out).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules();
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut seen = 0;
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().to_str().unwrap().to_string();
        let top = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        if !mods.contains(&top) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for line in text.lines() {
            let code = line.split("//").next().unwrap();
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if name != top && mods.contains(&name) {
                    seen += 1;
                    out.entry(top.clone()).or_default().insert(name);
                }
            }
        }
    }
    assert!(
        seen > 50,
        "the scan found only {seen} imports: it no longer reads the code"
    );
    out
}

#[test]
fn the_readme_names_every_module_and_nothing_else() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("\n## Where to look\n")
        .nth(1)
        .expect("README has a `## Where to look` section");
    let section = section.split("\n## ").next().unwrap();
    let named: BTreeSet<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `src/"))
        .map(|l| {
            let path = l.split('`').next().unwrap();
            path.trim_end_matches('/')
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    assert_eq!(
        named,
        modules(),
        "README `Where to look` against src/lib.rs"
    );
    for m in &named {
        let file = root().join(format!("src/{m}.rs"));
        let dir = root().join(format!("src/{m}/mod.rs"));
        let row = if dir.exists() {
            format!("| `src/{m}/` |")
        } else {
            assert!(file.exists(), "src/{m} is neither a file nor a folder");
            format!("| `src/{m}.rs` |")
        };
        assert!(
            section.contains(&row),
            "the README names {m} as {row:?} should"
        );
    }
}

#[test]
fn no_two_modules_import_each_other_round_a_circle() {
    let deps = imports();
    // Depth-first search for a back edge; the path is the circle.
    fn visit(
        m: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(at) = path.iter().position(|p| p == m) {
            panic!("import circle: {} -> {m}", path[at..].join(" -> "));
        }
        if done.contains(m) {
            return;
        }
        path.push(m.to_string());
        for next in deps.get(m).into_iter().flatten() {
            visit(next, deps, path, done);
        }
        path.pop();
        done.insert(m.to_string());
    }
    let mut done = BTreeSet::new();
    for m in modules() {
        visit(&m, &deps, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_configuration_imports_nothing_it_configures() {
    let deps = imports();
    let config: Vec<&String> = deps.get("config").into_iter().flatten().collect();
    assert!(
        config
            .iter()
            .all(|m| ["route", "timefmt"].contains(&m.as_str())),
        "config imports {config:?}: the model is the floor the rest stands on"
    );
}
