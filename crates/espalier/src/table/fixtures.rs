//! Specs and helpers shared by the table module's unit tests.

use super::collect::Point;
use super::plan::TableOptions;

pub(super) const SPEC: &str = r#"
    [table]
    name = "t"
    title = "T"
    metrics = ["accuracy"]
    scale = "small"
    [scale.small]
    description = "tiny"
    sets = ["train.epochs=${e}"]
    vars = { e = 2 }
    [[prereq]]
    name = "dense"
    config = "a.toml"
    [[method]]
    name = "a"
    config = "a.toml"
    from = "dense"
    sweep = { key = "structured.keep", values = [10, 20] }
    [[method]]
    name = "b"
    config = "b.toml"
    [[claim]]
    text = "a beats b"
    kind = "beats"
    a = "a"
    b = "b"
"#;

pub(super) fn opts() -> TableOptions {
    TableOptions {
        spec_path: "t.toml".into(),
        scale: None,
        data_dir: None,
        runs: None,
        out: None,
        jobs: 1,
        max_cells: None,
        report_only: false,
        partial: false,
        quiet: true,
    }
}

pub(super) fn point(method: &str, sparsity: f64, value: f64, seed: u64) -> Point {
    Point {
        task: String::new(),
        method: method.into(),
        model: "m".into(),
        data: "d".into(),
        sparsity,
        setting: None,
        metric: "accuracy".into(),
        value,
        seed,
        converged: true,
    }
}

pub(super) const TASKS: &str = r#"
    [table]
    name = "g"
    title = "G"
    metrics = ["accuracy"]
    scale = "small"
    average = true
    seeds = [42]
    [scale.small]
    description = "tiny"
    cell_sets = ["data.limit_train=${n}"]
    vars = { n = 100, dense = "runs/glue-${task}-minilm" }
    [[task]]
    name = "rte"
    sets = ['data.task="rte"']
    [[task]]
    name = "mrpc"
    label = "MRPC"
    sets = ['data.task="mrpc"', 'data.eval_split="test"']
    metrics = ["f1"]
    [[prereq]]
    name = "dense"
    config = "configs/glue/${task}.toml"
    dir = "${dense}"
    [[method]]
    name = "mi"
    config = "mi.toml"
    from = "dense"
    [[method]]
    name = "l1"
    config = "l1.toml"
    from = "dense"
    [[reference]]
    method = "mi"
    task = "mrpc"
    sparsity = 0.5
    value = 80.0
    source = "p"
    [[claim]]
    text = "mi beats l1"
    kind = "beats"
    a = "mi"
    b = "l1"
"#;
