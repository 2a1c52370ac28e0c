//! Resource kinds and their names (kind name, plural URL segment, singular).

/// Every resource kind the API serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Node,
    App,
    Function,
    Trigger,
    Task,
    Config,
    Secret,
    Bucket,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Node,
        Kind::App,
        Kind::Function,
        Kind::Trigger,
        Kind::Task,
        Kind::Config,
        Kind::Secret,
        Kind::Bucket,
    ];

    /// The `kind` field value: `App`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::App => "App",
            Kind::Function => "Function",
            Kind::Trigger => "Trigger",
            Kind::Task => "Task",
            Kind::Config => "Config",
            Kind::Secret => "Secret",
            Kind::Bucket => "Bucket",
        }
    }

    /// URL path segment: `apps`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::App => "apps",
            Kind::Function => "functions",
            Kind::Trigger => "triggers",
            Kind::Task => "tasks",
            Kind::Config => "configs",
            Kind::Secret => "secrets",
            Kind::Bucket => "buckets",
        }
    }

    /// Lowercase singular: `app`.
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::App => "app",
            Kind::Function => "function",
            Kind::Trigger => "trigger",
            Kind::Task => "task",
            Kind::Config => "config",
            Kind::Secret => "secret",
            Kind::Bucket => "bucket",
        }
    }

    /// Exact `kind` field match (`App`).
    pub fn from_kind_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// What a CLI user may type: singular, plural or kind name, case-insensitive
    /// (`app`, `apps`, `App`).
    pub fn from_user(s: &str) -> Option<Kind> {
        let s = s.to_ascii_lowercase();
        Kind::ALL
            .into_iter()
            .find(|k| k.plural() == s || k.singular() == s)
    }

    /// URL segment match (`apps`).
    pub fn from_plural(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.plural() == s)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
