//! Choosing which branches of a repo to scan: a name pattern, then thinning by step.

use crate::series::manifest::BranchSampling;
use crate::source::branch::BranchName;

/// `*` matches any run of characters (including none); everything else matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// The branches to scan, ordered by step: those matching the pattern that parse as checkpoints,
/// then `every`, `log_spaced` and `max` applied in that order.
pub fn sample_branches(names: &[String], sampling: &BranchSampling) -> Vec<(String, u64)> {
    let mut matched: Vec<(String, u64)> = names
        .iter()
        .filter(|n| glob_match(&sampling.pattern, n))
        .filter_map(|n| Some((n.clone(), BranchName::parse(n).checkpoint()?.step)))
        .collect();
    matched.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    matched.dedup_by_key(|(_, step)| *step);
    if let Some(every) = sampling.every {
        matched.retain(|(_, step)| step % every == 0);
    }
    if let Some(count) = sampling.log_spaced {
        let steps: Vec<u64> = matched.iter().map(|(_, s)| *s).collect();
        let keep = nearest_to_log_spaced(&steps, count);
        matched = keep.into_iter().map(|i| matched[i].clone()).collect();
    }
    if let Some(max) = sampling.max {
        let keep = evenly_thinned(matched.len(), max);
        matched = keep.into_iter().map(|i| matched[i].clone()).collect();
    }
    matched
}

/// Indices (ascending, distinct) of the sorted `steps` nearest in log(step) to `count` targets
/// log-spaced between the smallest positive and the largest step; step 0 is always kept.
pub fn nearest_to_log_spaced(steps: &[u64], count: usize) -> Vec<usize> {
    let positive: Vec<usize> = (0..steps.len()).filter(|&i| steps[i] > 0).collect();
    let mut keep: Vec<usize> = (0..steps.len()).filter(|&i| steps[i] == 0).collect();
    if let (Some(&lo), Some(&hi)) = (positive.first(), positive.last()) {
        let (a, b) = ((steps[lo] as f64).ln(), (steps[hi] as f64).ln());
        for t in 0..count {
            let target = if count == 1 {
                b
            } else {
                a + (b - a) * t as f64 / (count - 1) as f64
            };
            let nearest = positive
                .iter()
                .copied()
                .min_by(|&i, &j| {
                    let di = ((steps[i] as f64).ln() - target).abs();
                    let dj = ((steps[j] as f64).ln() - target).abs();
                    di.total_cmp(&dj)
                })
                .expect("non-empty");
            keep.push(nearest);
        }
    }
    keep.sort_unstable();
    keep.dedup();
    keep
}

/// At most `max` of `0..len`, evenly spaced, first and last included.
pub fn evenly_thinned(len: usize, max: usize) -> Vec<usize> {
    if len <= max {
        return (0..len).collect();
    }
    if max == 1 {
        return vec![len - 1];
    }
    let mut keep: Vec<usize> = (0..max)
        .map(|i| ((i * (len - 1)) as f64 / (max - 1) as f64).round() as usize)
        .collect();
    keep.dedup();
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("stage1-*", "stage1-step10-tokens1B"));
        assert!(!glob_match("stage1-*", "stage2-step10-tokens1B"));
        assert!(glob_match("*step*-tokens*", "stage1-step10-tokens1B"));
        assert!(glob_match("main", "main"));
        assert!(!glob_match("a*a", "a"));
    }

    #[test]
    fn samples_by_step() {
        let names: Vec<String> = [0u64, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
            .iter()
            .map(|s| format!("stage1-step{s}-tokens{s}"))
            .chain(["main".to_string(), "stage2-step5-tokens1".to_string()])
            .collect();
        let all = sample_branches(
            &names,
            &BranchSampling {
                pattern: "stage1-*".into(),
                ..Default::default()
            },
        );
        assert_eq!(all.len(), 10);
        assert_eq!(all[9].1, 1000);
        let every = sample_branches(
            &names,
            &BranchSampling {
                pattern: "stage1-*".into(),
                every: Some(8),
                ..Default::default()
            },
        );
        let steps: Vec<u64> = every.iter().map(|x| x.1).collect();
        assert_eq!(steps, vec![0, 8, 16, 32, 64, 128, 256, 512, 1000]);
        // Log-spaced over 4..1000 with 3 targets: 4, ~63, 1000 → 4, 64, 1000, plus step 0.
        let log = sample_branches(
            &names,
            &BranchSampling {
                pattern: "stage1-*".into(),
                log_spaced: Some(3),
                ..Default::default()
            },
        );
        let steps: Vec<u64> = log.iter().map(|x| x.1).collect();
        assert_eq!(steps, vec![0, 4, 64, 1000]);
        assert_eq!(evenly_thinned(10, 4), vec![0, 3, 6, 9]);
        assert_eq!(evenly_thinned(3, 5), vec![0, 1, 2]);
    }
}
