#[derive(Clone, Debug, PartialEq)]
pub struct Problem;
impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("x") }
}
pub fn parse_definition(_s: &str, _f: &str) -> Result<crate::definition::Definition, Vec<Problem>> { Err(vec![]) }
#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_saphyr::{MessageFormatter, Spanned};

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct S {
        id: Spanned<String>,
        #[serde(default)]
        needs: Vec<Spanned<String>>,
        #[serde(default)]
        with: Option<Spanned<serde_json::Value>>,
        #[serde(default)]
        n: Option<Spanned<u32>>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        name: Spanned<String>,
        steps: Vec<Spanned<S>>,
    }

    fn show(src: &str) {
        match serde_saphyr::from_str::<T>(src) {
            Ok(t) => println!("OK {t:#?}"),
            Err(e) => {
                println!("---- to_string:\n{e}\n---- without_snippet:\n{}\n---- user:\n{}\n---- loc: {:?}", e.without_snippet(), serde_saphyr::UserMessageFormatter.format_message(e.without_snippet()), e.location().map(|l| (l.line(), l.column())));
                println!("---- default:\n{}", serde_saphyr::DefaultMessageFormatter.format_message(e.without_snippet()));
            }
        }
    }

    #[test]
    fn validate_probe() {
        show("name: x\nsteps:\n  - id: a\n    needs: [b, c]\n    with: {p: 1, q: [1, 'x']}\n    n: 3\n");
        show("{\"name\": \"x\", \"steps\": [{\"id\": \"a\",\n \"needs\": [\"b\"], \"with\": {\"p\": null}}]}");
        show("name: x\nsteps:\n  - id: a\n    bogus: 1\n");
        show("name: x\nsteps:\n  - id: a\n    n: -3\n");
        show("name: x\nsteps:\n  - id: a\n    n: [\n");
        show("name: x\nsteps:\n  - id: a\n  id: b\n");
        show("name: x\nname: y\nsteps: []\n");
        show("");
        show("name: x\n");
        show("name: x\nsteps:\n  - {}\n");
        show("- 1\n");
        show("name: x\nsteps:\n  - id: a\n    with: {a: 1, a: 2}\n");
        show("name: x\nsteps:\n  - id: a\n    needs: b\n");
        show("name: x\nsteps:\n  - id: a\n    n:\n");
        show("name: x\nsteps:\n  - id: a\n    with:\n");
    }
}
