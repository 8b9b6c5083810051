use super::*;
use crate::tasks::{OutputKind, TaskSpec};

const CHAIN: &str = r#"{"tasks":[{"id":0,"task":"image-to-image-retrieval","dep":[-1],"args":{"image":"<image>-1"}},{"id":1,"task":"image-to-text","dep":[0],"args":{"image":"<resource>-0"}}]}"#;

#[test]
fn canonical_text_round_trips() {
    let plan = Plan::parse(CHAIN).unwrap();
    assert_eq!(plan.tasks.len(), 2);
    assert_eq!(plan.tasks[1].dep, vec![0]);
    assert_eq!(
        plan.tasks[1].args[&ArgName::Image],
        ArgValue::Ref(Reference::Resource(0))
    );
    assert_eq!(plan.to_json(), CHAIN);
    plan.validate(&Catalog::builtin(), Some(1)).unwrap();
}

#[test]
fn reads_hugginggpt_lists_and_plans_inside_prose() {
    let text = "Here is the plan:\n```json\n[{\"task\": \"visual-question-answering\", \"id\": 0, \"dep\": [-1], \"args\": {\"question\": \"what colour is it?\", \"image\": \"<image>-2\"}}]\n```";
    let plan = Plan::parse(text).unwrap();
    assert_eq!(plan.tasks[0].task, "visual-question-answering");
    assert_eq!(
        plan.to_json(),
        r#"{"tasks":[{"id":0,"task":"visual-question-answering","dep":[-1],"args":{"image":"<image>-2","question":"what colour is it?"}}]}"#
    );
    let err = plan.validate(&Catalog::builtin(), Some(1)).unwrap_err();
    assert!(err.to_string().contains("has 1 image"), "{err}");
}

#[test]
fn labels_lists_survive() {
    let text = r#"{"tasks":[{"id":0,"task":"zero-shot-image-classification","dep":[-1],"args":{"image":"<image>-1","labels":["a red circle","a blue square"]}}]}"#;
    let plan = Plan::parse(text).unwrap();
    assert_eq!(plan.to_json(), text);
    assert_eq!(
        plan.tasks[0].args[&ArgName::Labels].as_plain(),
        "a red circle, a blue square"
    );
}

#[test]
fn syntax_errors_name_the_problem() {
    for (text, needle) in [
        ("no plan here", "no JSON plan"),
        ("{\"steps\": []}", "no `tasks` list"),
        (r#"[{"id": -3, "task": "image-to-text"}]"#, "`id`"),
        (r#"[{"id": 0, "task": 7}]"#, "`task`"),
        (r#"[{"id": 0, "task": "x", "dep": ["a"]}]"#, "`dep`"),
        (
            r#"[{"id": 0, "task": "x", "args": {"colour": "red"}}]"#,
            "`colour`",
        ),
        (
            r#"[{"id": 0, "task": "x", "args": {"text": 3}}]"#,
            "argument `text`",
        ),
    ] {
        let err = Plan::parse(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
}

#[test]
fn validation_names_the_task_and_argument() {
    let catalog = Catalog::builtin();
    let cases = [
        ("[]", "no tasks"),
        (
            r#"[{"id":0,"task":"object-detection","dep":[-1],"args":{"image":"<image>-1"}}]"#,
            "unknown task `object-detection`",
        ),
        (
            r#"[{"id":0,"task":"image-to-text","dep":[1],"args":{"image":"<image>-1"}},{"id":1,"task":"image-to-text","dep":[-1],"args":{"image":"<image>-1"}}]"#,
            "not an earlier task",
        ),
        (
            r#"[{"id":0,"task":"visual-question-answering","dep":[-1],"args":{"image":"<image>-1"}}]"#,
            "needs the argument `question`",
        ),
        (
            r#"[{"id":0,"task":"image-to-text","dep":[-1],"args":{"image":"<image>-1","labels":["a"]}}]"#,
            "takes no argument `labels`",
        ),
        (
            r#"[{"id":0,"task":"image-to-text","dep":[-1],"args":{"image":"<image>-1"}},{"id":1,"task":"text-generation","dep":[-1],"args":{"text":"<resource>-0"}}]"#,
            "`dep` does not list task 0",
        ),
        (
            r#"[{"id":0,"task":"image-text-matching","dep":[-1],"args":{"image":"<image>-1","text":"a cat"}},{"id":1,"task":"image-to-text","dep":[0],"args":{"image":"<resource>-0"}}]"#,
            "cannot take the result of task 0",
        ),
        (
            r#"[{"id":0,"task":"text-generation","dep":[-1],"args":{"text":"<image>-1"}}]"#,
            "cannot be an image",
        ),
        (
            r#"[{"id":0,"task":"text-generation","dep":[-1],"args":{"text":"  "}}]"#,
            "is empty",
        ),
        (
            r#"[{"id":0,"task":"image-to-text","dep":[-1],"args":{"image":"<image>-1"}},{"id":0,"task":"image-to-text","dep":[-1],"args":{"image":"<image>-1"}}]"#,
            "used twice",
        ),
    ];
    for (text, needle) in cases {
        let plan = Plan::parse(text).unwrap();
        let err = plan.validate(&catalog, Some(1)).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
}

#[test]
fn declared_task_types_join_the_catalog() {
    let mut catalog = Catalog::builtin();
    let spec = TaskSpec {
        name: "object-detection".into(),
        description: "Find objects and their boxes.".into(),
        required: vec![ArgName::Image],
        optional: vec![],
        output: OutputKind::Labels,
    };
    catalog.add(spec.clone()).unwrap();
    assert!(catalog.add(spec).unwrap_err().to_string().contains("twice"));
    let plan = Plan::parse(r#"[{"id":0,"task":"object-detection","dep":[-1],"args":{"image":"<image>-1"}},{"id":1,"task":"text-generation","dep":[0],"args":{"text":"<resource>-0"}}]"#).unwrap();
    plan.validate(&catalog, Some(1)).unwrap();
}

#[test]
fn references_parse_strictly() {
    assert_eq!(
        Reference::parse("<resource>-12"),
        Some(Reference::Resource(12))
    );
    assert_eq!(Reference::parse("<image>-1"), Some(Reference::Image(1)));
    for s in [
        "<resource>-",
        "<resource>-x",
        "<image>--1",
        "resource-1",
        "<resource>-1234567",
    ] {
        assert_eq!(Reference::parse(s), None, "{s}");
    }
}
