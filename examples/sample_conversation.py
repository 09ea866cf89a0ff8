"""A small multi-session chat history used by the examples."""

SESSIONS = {
    "2024-03-02": [
        ("user", "I'm planning a trip to Japan in the autumn, probably late October."),
        ("assistant", "Late October is a great time for autumn leaves in Kyoto."),
        ("user", "I'd love to see Kyoto. My budget is around 3,000 dollars for two weeks."),
        ("assistant", "That's workable with hostels or business hotels and a rail pass."),
    ],
    "2024-03-15": [
        ("user", "My daughter Maya just started violin lessons on Tuesdays."),
        ("assistant", "How exciting! Violin teaches patience and good listening."),
        ("user", "Her teacher says she needs a 3/4 size violin, not a full size."),
    ],
    "2024-04-01": [
        ("user", "I've been getting headaches after long days on the laptop."),
        ("assistant", "Try the 20-20-20 rule and check your screen brightness."),
        ("user", "Good idea. Also, I switched to decaf coffee last week."),
    ],
    "2024-04-20": [
        ("user", "We adopted a rescue greyhound named Pepper!"),
        ("assistant", "Greyhounds are gentle; Pepper will love short sprints and long naps."),
        ("user", "Pepper is scared of the vacuum cleaner, any tips?"),
    ],
}
QUESTIONS = [
    "What instrument is my daughter learning, and when?",
    "How much did I say I could spend on my Japan trip?",
    "What's my dog's name?",
]


def messages() -> list[dict]:
    """The history as saememory message dicts, one session per date."""
    out = []
    for date, turns in SESSIONS.items():
        for i, (role, content) in enumerate(turns):
            out.append({"role": role, "content": content, "session_id": f"session-{date}",
                        "timestamp": date, "id": f"{date}-{i + 1}"})
    return out
