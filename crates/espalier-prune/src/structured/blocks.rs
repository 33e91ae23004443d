//! Block-by-block structured pruning (`structured.block_by_block`), the
//! schedule i-SpaSP's authors run on ResNet-34 (Wolfe & Kyrillidis, arXiv
//! 2112.04905; their `prune_resnet34_ispasp.py::prune_rn34_imagenet`): one
//! residual block at a time in model order, each block's units chosen on
//! calibration activations taken through the model as the earlier shrinks
//! (and their fine-tuning) left it, then `block_finetune_epochs` at a
//! constant learning rate (the authors: one epoch at 0.01 with a fresh
//! optimizer), and after the last block the full fine-tuning
//! (`finetune_epochs`, the experiment's schedule). The authors skip the
//! first block of every stage and, by default, the last
//! (`skip_first_block`, `skip_last_block`).
//!
//! A step is one residual block's group sets ([`Model::block_of`]; a
//! bottleneck has two); a set outside blocks (an MLP layer, a BERT
//! sublayer) is a step of its own. Works with every one-pass criterion.
//!
//! Round `r` of the run is the `r`-th step's shrink and its fine-tuning;
//! the final fine-tuning belongs to the last round.

use espalier_core::{bail, Result};
use espalier_models::Model;

use super::{selected_sets, StructuredConfig};
use crate::method::{Action, Length, Phase, PhaseLr, Plan};

/// The selected group sets of `model`, grouped into steps (one residual
/// block, or one set outside blocks), in model order.
pub fn steps(model: &dyn Model, cfg: &StructuredConfig) -> Result<Vec<Vec<String>>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut last = None;
    for set in selected_sets(model, cfg)? {
        let block = model.block_of(&set.name).map(|b| (b.stage, b.index));
        match out.last_mut() {
            Some(step) if block.is_some() && block == last => step.push(set.name),
            _ => out.push(vec![set.name]),
        }
        last = block;
    }
    if out.is_empty() {
        bail!("structured.block_by_block: no group set to prune");
    }
    Ok(out)
}

/// Dense training, then per step its shrink and `block_finetune_epochs`
/// at a constant rate, then `finetune_epochs` under the schedule.
pub fn plan(cfg: &StructuredConfig, dense_epochs: usize, steps: Vec<Vec<String>>) -> Plan {
    let mut phases = vec![Phase::new(0, Length::Epochs(dense_epochs), vec![])];
    let n = steps.len();
    for (i, sets) in steps.into_iter().enumerate() {
        phases.push(Phase {
            round: i + 1,
            length: Length::Epochs(cfg.block_finetune_epochs),
            start: vec![
                Action::Shrink { recalibrate_bn: cfg.recalibrate_bn, sets: Some(sets), keep_ratio: None },
                Action::NewOptimizer,
            ],
            lr: PhaseLr::Constant(cfg.block_finetune_lr),
        });
    }
    phases.push(Phase::new(n, Length::Epochs(cfg.finetune_epochs), vec![Action::NewOptimizer]));
    Plan { phases, rewind_point: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use espalier_models::resnet::ResNetConfig;
    use espalier_models::{MlpConfig, ModelConfig};

    fn cfg(extra: serde_json::Value) -> StructuredConfig {
        let mut v = serde_json::json!({ "method": "activation", "keep_ratio": 0.5, "block_by_block": true });
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn resnet_steps_follow_the_blocks_and_skip_stage_ends() -> Result<()> {
        let m = ModelConfig::Resnet(ResNetConfig::cifar(20)).init(0, &Device::Cpu)?;
        let all = steps(m.as_ref(), &cfg(serde_json::json!({})))?;
        assert_eq!(all.len(), 9);
        assert_eq!(all[4], vec!["layer2.1.conv1".to_string()]);
        let c = cfg(serde_json::json!({ "skip_first_block": true, "skip_last_block": true }));
        let inner = steps(m.as_ref(), &c)?;
        assert_eq!(inner, vec![vec!["layer1.1.conv1"], vec!["layer2.1.conv1"], vec!["layer3.1.conv1"]]);
        let first = steps(m.as_ref(), &cfg(serde_json::json!({ "skip_first_block": true })))?;
        assert_eq!(first.len(), 6);
        assert!(first.iter().all(|s| !s[0].contains(".0.")));
        // A bottleneck block is one step of two sets.
        let r50 = ModelConfig::Resnet(ResNetConfig {
            style: espalier_models::ResNetStyle::Imagenet,
            ..ResNetConfig::cifar(50)
        })
        .init(0, &Device::Cpu)?;
        let s = steps(r50.as_ref(), &cfg(serde_json::json!({ "groups": ["layer1.*"] })))?;
        assert_eq!(s[0], vec!["layer1.0.conv1".to_string(), "layer1.0.conv2".to_string()]);
        assert_eq!(s.len(), 3);
        Ok(())
    }

    #[test]
    fn plan_shrinks_each_step_then_fine_tunes() -> Result<()> {
        let m = ModelConfig::Mlp(MlpConfig {
            input_dim: 8,
            hidden: vec![6, 4],
            num_classes: 3,
            ..MlpConfig::lenet_300_100()
        })
        .init(0, &Device::Cpu)?;
        let c = cfg(serde_json::json!({ "block_finetune_epochs": 1, "block_finetune_lr": 0.01, "finetune_epochs": 5 }));
        let p = plan(&c, 2, steps(m.as_ref(), &c)?);
        assert_eq!(p.phases.len(), 4);
        assert_eq!(p.phases[1].round, 1);
        assert_eq!(p.phases[1].lr, PhaseLr::Constant(Some(0.01)));
        assert_eq!(
            p.phases[2].start[0],
            Action::Shrink { recalibrate_bn: 0, sets: Some(vec!["fc2".into()]), keep_ratio: None }
        );
        assert_eq!((p.phases[3].round, p.phases[3].length, p.phases[3].lr), (2, Length::Epochs(5), PhaseLr::Schedule));
        // An MLP has no residual blocks to skip.
        let e = steps(m.as_ref(), &cfg(serde_json::json!({ "skip_last_block": true }))).unwrap_err();
        assert!(e.to_string().contains("skip_last_block"), "{e}");
        Ok(())
    }
}
