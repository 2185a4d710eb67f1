//! The detectors: e-mail addresses, card numbers (Luhn) and phone numbers.

/// Which kinds of personal data to mask.
#[derive(Debug, Clone, Copy)]
pub struct Kinds {
    pub email: bool,
    pub card: bool,
    pub phone: bool,
}

impl Kinds {
    pub const ALL: Self = Self {
        email: true,
        card: true,
        phone: true,
    };
}

/// `text` with every detected item masked, or `None` when nothing was found.
pub fn mask(text: &str, kinds: Kinds) -> Option<String> {
    let mut out = text.to_owned();
    let mut changed = false;
    if kinds.email
        && let Some(t) = mask_emails(&out)
    {
        out = t;
        changed = true;
    }
    if (kinds.card || kinds.phone)
        && let Some(t) = mask_numbers(&out, kinds)
    {
        out = t;
        changed = true;
    }
    changed.then_some(out)
}

fn is_local(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._%+-".contains(c)
}

fn is_domain(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '-'
}

fn mask_emails(text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    // Start of what is not yet copied to `out`.
    let mut copied = 0;
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '@' {
            i += 1;
            continue;
        }
        let mut start = i;
        while start > copied && is_local(chars[start - 1]) {
            start -= 1;
        }
        // A local part does not start with a dot.
        while start < i && chars[start] == '.' {
            start += 1;
        }
        let mut end = i + 1;
        while end < chars.len() && is_domain(chars[end]) {
            end += 1;
        }
        // A sentence's full stop is not part of the domain.
        while end > i + 1 && (chars[end - 1] == '.' || chars[end - 1] == '-') {
            end -= 1;
        }
        let domain: String = chars[i + 1..end].iter().collect();
        let tld_ok = domain.rsplit_once('.').is_some_and(|(host, tld)| {
            !host.is_empty() && tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic())
        });
        if start < i && tld_ok {
            out.extend(&chars[copied..start]);
            out.push_str("[email]");
            copied = end;
            changed = true;
            i = end;
        } else {
            i += 1;
        }
    }
    if !changed {
        return None;
    }
    out.extend(&chars[copied..]);
    Some(out)
}

fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn mask_numbers(text: &str, kinds: Kinds) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut copied = 0;
    let mut i = 0;
    while i < chars.len() {
        let plus = chars[i] == '+' && chars.get(i + 1).is_some_and(char::is_ascii_digit);
        let opens = chars[i] == '(' && chars.get(i + 1).is_some_and(char::is_ascii_digit);
        let starts = (chars[i].is_ascii_digit() || plus || opens)
            && (i == 0 || !chars[i - 1].is_alphanumeric());
        if !starts {
            i += 1;
            continue;
        }
        let mut end = i + 1;
        while end < chars.len() && (chars[end].is_ascii_digit() || " -.()".contains(chars[end])) {
            end += 1;
        }
        // The span ends on a digit (or the `)` closing a group).
        while end > i && !chars[end - 1].is_ascii_digit() {
            end -= 1;
        }
        let span = &chars[i..end];
        let followed_by_word = chars.get(end).is_some_and(|c| c.is_alphanumeric());
        let digits: Vec<u32> = span.iter().filter_map(|c| c.to_digit(10)).collect();
        let dots = span.iter().filter(|&&c| c == '.').count();
        // Two separators in a row are two numbers, except `) ` and ` (`.
        let spaced = span.windows(2).any(|w| {
            let group = matches!((w[0], w[1]), (')', ' ') | (' ', '('));
            !(w[0].is_ascii_digit() || w[1].is_ascii_digit() || group)
        });
        let n = digits.len();
        let kind = if followed_by_word || spaced || dots == 1 {
            None
        } else if kinds.card
            && (13..=19).contains(&n)
            && span
                .iter()
                .all(|c| c.is_ascii_digit() || *c == ' ' || *c == '-')
            && luhn(&digits)
        {
            Some("[card]")
        } else if kinds.phone && ((9..=15).contains(&n) || (plus && (7..=15).contains(&n))) {
            Some("[phone]")
        } else {
            None
        };
        match kind {
            Some(m) => {
                out.extend(&chars[copied..i]);
                out.push_str(m);
                copied = end;
                changed = true;
                i = end;
            }
            None => i = end.max(i + 1),
        }
    }
    if !changed {
        return None;
    }
    out.extend(&chars[copied..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> String {
        mask(s, Kinds::ALL).unwrap_or_else(|| s.to_owned())
    }

    #[test]
    fn emails() {
        assert_eq!(
            m("write to jane.doe+x@mail.example.org."),
            "write to [email]."
        );
        assert_eq!(m("a@b and c@d.io"), "a@b and [email]");
        assert_eq!(m("no at-sign here"), "no at-sign here");
    }

    #[test]
    fn cards_pass_luhn() {
        assert_eq!(m("card 4111 1111 1111 1111 ok"), "card [card] ok");
        assert_eq!(m("card 4111-1111-1111-1111"), "card [card]");
        assert_eq!(m("4111111111111111"), "[card]");
    }

    #[test]
    fn phones() {
        assert_eq!(m("call +1 (555) 123-4567 now"), "call [phone] now");
        assert_eq!(m("call 555-123-4567"), "call [phone]");
        assert_eq!(m("+44 20 7946 0958"), "[phone]");
    }

    #[test]
    fn leaves_ordinary_numbers() {
        for s in [
            "on 2024-01-15 at 10:30",
            "pi is 3.14159265359",
            "order 12345",
            "v1.2.3",
            "id abc123456789xyz",
        ] {
            assert_eq!(m(s), s);
        }
    }
}
