//! Pages of sorted name lists (the catalog, a repository's tags), as the
//! distribution spec pages them: the names sorting after `last`, at most `n`.

/// One page of a sorted list of names, and whether more follow it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamePage {
    pub names: Vec<String>,
    pub more: bool,
}

impl NamePage {
    /// The page of `sorted` after `after` (from the start without it), at
    /// most `limit` names (all of them without it). A limit of 0 gives an
    /// empty page with nothing more, as the registry has always answered `n=0`.
    pub fn of(sorted: &[String], after: Option<&str>, limit: Option<usize>) -> NamePage {
        let start = after.map_or(0, |a| sorted.partition_point(|x| x.as_str() <= a));
        NamePage::from_iter(sorted[start..].iter().cloned(), limit)
    }

    /// The first `limit` names of an already sorted and filtered sequence;
    /// reads at most one name past the page (to know whether more follow).
    pub fn from_iter(names: impl IntoIterator<Item = String>, limit: Option<usize>) -> NamePage {
        let mut iter = names.into_iter();
        match limit {
            None => NamePage {
                names: iter.collect(),
                more: false,
            },
            Some(0) => NamePage::default(),
            Some(n) => {
                let names: Vec<String> = iter.by_ref().take(n).collect();
                let more = names.len() == n && iter.next().is_some();
                NamePage { names, more }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::NamePage;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn page(items: &[&str], more: bool) -> NamePage {
        NamePage {
            names: v(items),
            more,
        }
    }

    #[test]
    fn pages_follow_last_and_n() {
        let all = v(&["a", "b", "c", "d"]);
        assert_eq!(
            NamePage::of(&all, None, None),
            page(&["a", "b", "c", "d"], false)
        );
        assert_eq!(NamePage::of(&all, None, Some(2)), page(&["a", "b"], true));
        assert_eq!(
            NamePage::of(&all, Some("b"), Some(2)),
            page(&["c", "d"], false)
        );
        assert_eq!(
            NamePage::of(&all, Some("bb"), Some(10)),
            page(&["c", "d"], false)
        );
        assert_eq!(NamePage::of(&all, Some("d"), None), page(&[], false));
        assert_eq!(NamePage::of(&all, Some("z"), Some(1)), page(&[], false));
        assert_eq!(NamePage::of(&all, None, Some(0)), page(&[], false));
    }
}
