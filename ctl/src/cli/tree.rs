//! `archonctl tree`'s picture: each service's name, then its processes, each indented under its
//! parent.
//!
//! Services come in the order of their first row, and processes in the order archon sent them.
//! A process whose parent is not among the service's processes (its main process, or one that
//! escaped with `setsid` and was adopted) starts a tree of its own. The rows are the peer's
//! word: a pid that repeats or parents that form a loop cannot make the walk go on for ever,
//! since every row is drawn exactly once.

use std::collections::HashMap;
use std::fmt::Write;

use archon_proto::TreeNode;

use super::table::printable;

/// Spaces per level of depth.
const INDENT: usize = 2;

/// Deepest level drawn by indentation alone. A process deeper than this is drawn at this depth
/// with its level written before it (`[40] 1234 sh`), so that a long chain of parents cannot
/// make lines, and the picture, grow with the square of its length.
const MAX_DRAWN_DEPTH: usize = 32;

/// The picture, every line ended by `\n`; empty when there are no rows.
pub fn render(nodes: &[TreeNode]) -> String {
    let mut groups: Vec<(&[u8], Vec<usize>)> = Vec::new();
    let mut group_of: HashMap<&[u8], usize> = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let g = *group_of.entry(&node.name).or_insert_with(|| {
            groups.push((&node.name, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    let mut drawn = vec![false; nodes.len()];
    let mut out = String::new();
    for (name, members) in &groups {
        out.push_str(&printable(name));
        out.push('\n');
        let mut children: HashMap<i32, Vec<usize>> = HashMap::new();
        for &i in members {
            children.entry(nodes[i].ppid).or_default().push(i);
        }
        let pids: HashMap<i32, ()> = members.iter().map(|&i| (nodes[i].pid, ())).collect();
        let is_root = |i: usize| {
            let n = &nodes[i];
            n.ppid == n.pid || !pids.contains_key(&n.ppid)
        };
        // Roots first, in order; then whatever a loop of parents kept out of reach.
        let starts = members
            .iter()
            .copied()
            .filter(|&i| is_root(i))
            .chain(members.iter().copied());
        for start in starts {
            if drawn[start] {
                continue;
            }
            let mut stack = vec![(start, 1)];
            while let Some((i, depth)) = stack.pop() {
                if drawn[i] {
                    continue;
                }
                drawn[i] = true;
                let node = &nodes[i];
                let _ = write!(out, "{:w$}", "", w = depth.min(MAX_DRAWN_DEPTH) * INDENT);
                if depth > MAX_DRAWN_DEPTH {
                    let _ = write!(out, "[{depth}] ");
                }
                let _ = writeln!(out, "{} {}", node.pid, printable(&node.comm));
                if let Some(kids) = children.get(&node.pid) {
                    // Reversed onto the stack, so that they come out in order.
                    stack.extend(
                        kids.iter()
                            .rev()
                            .filter(|&&k| !drawn[k] && k != i)
                            .map(|&k| (k, depth + 1)),
                    );
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, pid: i32, ppid: i32, comm: &str) -> TreeNode {
        TreeNode {
            name: name.as_bytes().to_vec(),
            pid,
            ppid,
            comm: comm.as_bytes().to_vec(),
        }
    }

    #[test]
    fn processes_hang_under_their_parents_per_service() {
        let nodes = [
            node("web", 4242, 100, "python3"),
            node("db", 4100, 100, "redis-server"),
            node("web", 4251, 4250, "sleep"),
            node("web", 4250, 4242, "sh"),
            node("web", 4243, 4242, "python3"),
            // Escaped with setsid: adopted by init, still in the service's cgroup.
            node("web", 5000, 1, "daemon"),
            node("7", 300, 100, "sleep"),
        ];
        let want = "\
web
  4242 python3
    4250 sh
      4251 sleep
    4243 python3
  5000 daemon
db
  4100 redis-server
7
  300 sleep
";
        assert_eq!(render(&nodes), want);
        assert_eq!(render(&[]), "");
    }

    #[test]
    fn loops_and_repeats_draw_every_row_once() {
        let nodes = [
            node("a", 2, 3, "x"),
            node("a", 3, 2, "y"),
            node("a", 4, 4, "self"),
            node("a", 5, 4, "kid"),
            node("a", 5, 4, "twin"),
            node("b", 1, 0, "init\x1b[2J"),
        ];
        let want = "\
a
  4 self
    5 kid
    5 twin
  2 x
    3 y
b
  1 init\\x1b[2J
";
        assert_eq!(render(&nodes), want);
    }

    #[test]
    fn a_long_chain_neither_recurses_nor_indents_without_end() {
        let nodes: Vec<TreeNode> = (1..=100_000)
            .map(|p| node("deep", p + 1, p, "sh"))
            .collect();
        let text = render(&nodes);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 100_001);
        let indent = " ".repeat(MAX_DRAWN_DEPTH * INDENT);
        assert_eq!(
            lines[MAX_DRAWN_DEPTH],
            format!("{indent}{} sh", MAX_DRAWN_DEPTH + 1)
        );
        assert_eq!(
            lines[MAX_DRAWN_DEPTH + 1],
            format!(
                "{indent}[{}] {} sh",
                MAX_DRAWN_DEPTH + 1,
                MAX_DRAWN_DEPTH + 2
            )
        );
        assert_eq!(lines[100_000], format!("{indent}[100000] 100001 sh"));
    }
}
