//! Which stages the target needs, in what order, and which of them can
//! run at the same time.

use std::collections::BTreeSet;

use super::Stage;
use crate::BuildError;

/// The stages the target needs, itself included.
pub(super) fn needed_stages(stages: &[Stage], target: usize) -> BTreeSet<usize> {
    let mut needed = BTreeSet::new();
    let mut todo = vec![target];
    while let Some(index) = todo.pop() {
        if needed.insert(index) {
            todo.extend(stages[index].depends_on.iter().copied());
        }
    }
    needed
}

/// The needed stages, dependencies first; a cycle is an error.
pub(super) fn topological_order(
    stages: &[Stage],
    needed: &BTreeSet<usize>,
) -> Result<Vec<usize>, BuildError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Visiting,
        Done,
    }
    fn visit(
        stages: &[Stage],
        index: usize,
        marks: &mut [Mark],
        path: &mut Vec<usize>,
        order: &mut Vec<usize>,
    ) -> Result<(), BuildError> {
        match marks[index] {
            Mark::Done => return Ok(()),
            Mark::Visiting => {
                let start = path.iter().position(|&p| p == index).unwrap_or(0);
                let names: Vec<String> = path[start..]
                    .iter()
                    .chain(std::iter::once(&index))
                    .map(|&i| stage_label(&stages[i]))
                    .collect();
                return Err(BuildError::at(
                    stages[index].line,
                    Some("FROM"),
                    format!("circular dependency between stages: {}", names.join(" -> ")),
                ));
            }
            Mark::New => {}
        }
        marks[index] = Mark::Visiting;
        path.push(index);
        for &dep in &stages[index].depends_on {
            visit(stages, dep, marks, path, order)?;
        }
        path.pop();
        marks[index] = Mark::Done;
        order.push(index);
        Ok(())
    }
    let mut marks = vec![Mark::New; stages.len()];
    let mut order = Vec::new();
    for &index in needed {
        visit(stages, index, &mut marks, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

/// Group stages by depth: a stage's group is one after its deepest
/// dependency's, so each group's stages can run in parallel.
pub(super) fn schedule_groups(stages: &[Stage], order: &[usize]) -> Vec<Vec<usize>> {
    let mut depth = vec![0usize; stages.len()];
    for &index in order {
        depth[index] = stages[index]
            .depends_on
            .iter()
            .map(|&d| depth[d] + 1)
            .max()
            .unwrap_or(0);
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &index in order {
        let d = depth[index];
        if groups.len() <= d {
            groups.resize(d + 1, Vec::new());
        }
        groups[d].push(index);
    }
    for group in &mut groups {
        group.sort_unstable();
    }
    groups
}

pub(super) fn stage_label(stage: &Stage) -> String {
    match &stage.name {
        Some(name) => format!("{} ({name})", stage.index),
        None => stage.index.to_string(),
    }
}
