//! The teams a connection joined or is typing in.

/// A connection's teams (joined, typing in): a few names in a list, smaller than a set
/// in every connection and as quick to search at this size.
#[derive(Default)]
pub(super) struct Teams(Vec<String>);

impl Teams {
    pub(super) fn contains(&self, team: &str) -> bool {
        self.0.iter().any(|t| t == team)
    }

    pub(super) fn insert(&mut self, team: String) {
        if !self.contains(&team) {
            // Grown one at a time: most connections hold one or two teams.
            self.0.reserve_exact(1);
            self.0.push(team);
        }
    }

    /// Whether the team was there.
    pub(super) fn remove(&mut self, team: &str) -> bool {
        let index = self.0.iter().position(|t| t == team);
        index.map(|index| self.0.swap_remove(index)).is_some()
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &String> {
        self.0.iter()
    }
}

impl IntoIterator for Teams {
    type Item = String;
    type IntoIter = std::vec::IntoIter<String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}
