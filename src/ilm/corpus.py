"""Seeded synthetic children's stories: an offline stand-in for TinyStoriesV2 (demo and tests).

The text mimics TinyStoriesV2's raw files: paragraphs separated by newlines, stories separated
by a line holding `<|endoftext|>` (docs/method.md §3.1). A story has a cast (hero, friend, parent,
pet), a setting, some everyday scenes with dialogue, one problem (losing, finding, sharing,
something stuck or broken, a storm, a fear, a lost animal, a race, a new friend) and its
resolution, and an ending. Lengths vary so that most stories give at least one 256-token window.
"""

from __future__ import annotations

import random
import string
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

from ilm.io import write_text

STORY_SEPARATOR = "<|endoftext|>"

# --- word lists ---------------------------------------------------------------------------------

GIRL_NAMES = [
    "Lily", "Mia", "Sara", "Anna", "Zoe", "Emma", "Ella", "Lucy", "Amy", "Rosa", "Nora", "Ruby",
    "Daisy", "Maya", "Ivy", "Kim", "Jenny", "Molly", "Hannah", "Grace", "Chloe", "Sophie", "Bella",
    "Tina", "Olivia", "Clara", "Alice", "Poppy", "Susie", "Jill",
]
BOY_NAMES = [
    "Tom", "Ben", "Max", "Sam", "Leo", "Jack", "Tim", "Finn", "Noah", "Oliver", "Jake", "Eli",
    "Luke", "Owen", "Henry", "Mark", "Danny", "Theo", "Milo", "Oscar", "Peter", "Ryan", "Adam",
    "Joe", "Billy", "Bob", "Charlie", "Freddy", "Lucas", "Toby",
]
ANIMALS = [
    "cat", "dog", "bunny", "bird", "fox", "bear", "duck", "frog", "mouse", "owl", "puppy", "kitten",
    "squirrel", "turtle", "pig", "cow", "horse", "lamb", "goat", "hen", "deer", "lion", "monkey",
    "elephant", "giraffe", "penguin", "fish", "bee", "butterfly", "ladybug", "hedgehog", "raccoon",
    "zebra", "tiger", "snail", "worm", "dolphin", "seal", "parrot", "panda",
]
SOUNDS = {
    "cat": "meow", "dog": "woof", "puppy": "woof", "kitten": "mew", "duck": "quack", "frog": "ribbit",
    "owl": "hoot", "cow": "moo", "pig": "oink", "lamb": "baa", "goat": "maa", "hen": "cluck",
    "parrot": "squawk", "hamster": "squeak",
    "horse": "neigh", "lion": "roar", "tiger": "roar", "bee": "buzz", "bird": "tweet", "mouse": "squeak",
}
PETS = ["dog", "cat", "puppy", "kitten", "parrot", "hamster", "duck", "lamb"]
PET_NAMES = [
    "Spot", "Buddy", "Fluffy", "Coco", "Pip", "Rex", "Sunny", "Biscuit", "Mittens", "Patch",
    "Pepper", "Bubbles", "Socks", "Whiskers", "Rocky", "Honey",
]
# (noun, phrase saying where something is)
PLACES: List[Tuple[str, str]] = [
    ("park", "in the park"), ("beach", "at the beach"), ("forest", "in the forest"),
    ("river", "by the river"), ("farm", "on the farm"), ("garden", "in the garden"),
    ("school", "at school"), ("town", "in the small town"), ("lake", "near the lake"),
    ("hill", "on the green hill"), ("meadow", "in the meadow"), ("zoo", "at the zoo"),
    ("village", "in the village"), ("sea", "by the sea"), ("backyard", "in the backyard"),
    ("playground", "at the playground"), ("city", "in the big city"), ("woods", "in the woods"),
    ("mountains", "near the mountains"), ("market", "at the market"), ("pond", "by the pond"),
    ("jungle", "in the jungle"), ("castle", "in an old castle"), ("library", "at the library"),
]
HIDING_SPOTS = [
    "under the bed", "behind the couch", "in the toy box", "under a big leaf", "behind a tree",
    "in the tall grass", "under the table", "inside a boot", "next to the door", "in the sandbox",
    "behind the flower pot", "under the slide", "in the kitchen", "on top of the shelf",
    "under a pile of leaves", "in the laundry basket", "near the fence", "by the old well",
]
OBJECTS = [
    "ball", "kite", "box", "book", "blanket", "hat", "key", "cup", "spoon", "shell", "stone",
    "flower", "balloon", "drum", "boat", "bike", "crayon", "map", "coin", "ring", "necklace",
    "puzzle", "robot", "train", "truck", "sock", "shoe", "umbrella", "basket", "bucket", "shovel",
    "ribbon", "button", "feather", "lamp", "clock", "bell", "whistle", "jar", "pillow", "rope",
    "wagon", "sled", "sticker", "marble", "brush", "bag", "letter", "doll", "teddy bear",
    "toy car", "wand", "crown", "scarf", "mitten", "pencil", "picture", "rock", "acorn",
]
OBJECT_ADJECTIVES = [
    "big", "small", "shiny", "soft", "old", "new", "pretty", "round", "bright", "tiny", "huge",
    "smooth", "sparkly", "special", "fancy", "colorful", "heavy", "light", "strange", "beautiful",
    "plain", "bumpy", "fuzzy", "long", "short", "little", "lovely", "funny", "magic", "golden",
]
CHARACTER_ADJECTIVES = [
    "kind", "brave", "happy", "curious", "shy", "clever", "silly", "gentle", "friendly", "little",
    "busy", "cheerful", "playful", "honest", "careful", "smart", "quiet", "young", "sweet", "bold",
    "sleepy", "funny", "helpful", "polite",
]
COLORS = [
    "red", "blue", "green", "yellow", "pink", "purple", "orange", "brown", "white", "black",
    "gold", "silver", "gray",
]
HAPPY_FEELINGS = [
    "happy", "glad", "excited", "proud", "joyful", "thankful", "calm", "cheerful", "delighted",
    "pleased", "surprised", "relieved",
]
SAD_FEELINGS = [
    "sad", "scared", "worried", "upset", "angry", "lonely", "confused", "nervous", "grumpy",
    "tired", "afraid", "unhappy",
]
FOODS = [
    "apple", "cookie", "cupcake", "sandwich", "banana", "carrot", "pie", "pear", "muffin",
    "peach", "pancake", "lollipop", "donut", "plum", "biscuit", "orange", "egg", "ice cream cone",
    "slice of cake", "piece of bread", "bowl of soup", "cheese sandwich",
]
FAMILY = ["mom", "dad", "grandma", "grandpa", "big sister", "big brother", "aunt", "uncle"]
# (base form, past tense)
ACTIVITIES: List[Tuple[str, str]] = [
    ("run around the yard", "ran around the yard"), ("jump in the puddles", "jumped in the puddles"),
    ("build a sand castle", "built a sand castle"), ("draw pictures", "drew pictures"),
    ("sing songs", "sang songs"), ("read books", "read books"), ("pick flowers", "picked flowers"),
    ("chase butterflies", "chased butterflies"), ("climb trees", "climbed trees"),
    ("play hide and seek", "played hide and seek"), ("dance in the sun", "danced in the sun"),
    ("ride a bike", "rode a bike"), ("fly a kite", "flew a kite"), ("bake cookies", "baked cookies"),
    ("splash in the water", "splashed in the water"), ("look for bugs", "looked for bugs"),
    ("count the stars", "counted the stars"), ("play tag", "played tag"),
    ("feed the ducks", "fed the ducks"), ("watch the clouds", "watched the clouds"),
    ("dig in the sand", "dug in the sand"), ("paint rainbows", "painted rainbows"),
    ("build towers of blocks", "built towers of blocks"), ("plant seeds", "planted seeds"),
    ("swing on the swing", "swung on the swing"), ("slide down the slide", "slid down the slide"),
    ("go for long walks", "went for a long walk"), ("have picnics", "had a picnic"),
    ("play with toy trains", "played with toy trains"), ("collect shells", "collected shells"),
    ("roll down the hill", "rolled down the hill"), ("make mud pies", "made mud pies"),
]
TIMES = [
    "One day", "One morning", "One sunny afternoon", "Later that day", "The next day",
    "One evening", "After lunch", "In the morning", "On a cold winter day", "One spring day",
    "One summer morning", "On a windy day", "One rainy morning", "After school", "At noon",
    "Before dinner", "On Saturday", "One autumn day",
]
WEATHER = [
    "The sun was shining and the sky was blue.", "It was raining, and the ground was wet.",
    "The wind was blowing the leaves around.", "Soft snow was falling from the gray sky.",
    "The sky was cloudy, but it was still warm.", "Big dark clouds were coming over the hills.",
    "It was a warm day, and the birds were singing.", "The air was cool and fresh.",
    "The sun was hot, so everyone wanted to play in the shade.",
    "A little rain was falling, and there were puddles everywhere.",
    "The morning was quiet, and the grass was covered with dew.",
]
NUMBERS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
TOOLS = ["a long stick", "a ladder", "a rope", "a chair", "a big box", "a broom", "a net", "a step stool"]
FIXES = ["some glue", "some tape", "a needle and thread", "a little hammer", "some string"]
SHELTERS = ["a big tree", "a small cave", "an old barn", "the porch", "a wooden shed", "a bridge"]
FEARS = ["the dark", "the big dog next door", "the deep water", "loud thunder", "the tall slide",
         "the first day of school"]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# --- the story writer ---------------------------------------------------------------------------

_FORMATTER = string.Formatter()


@lru_cache(maxsize=None)
def _fields(template: str) -> Tuple[str, ...]:
    """The placeholder names of a template, parsed once."""
    return tuple(name for _, name, _, _ in _FORMATTER.parse(template) if name)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


# Placeholders drawn afresh every time a template uses them.
_FRESH: Dict[str, Callable[[random.Random], str]] = {
    "adj": lambda r: r.choice(OBJECT_ADJECTIVES),
    "cadj": lambda r: r.choice(CHARACTER_ADJECTIVES),
    "color": lambda r: r.choice(COLORS),
    "happy": lambda r: r.choice(HAPPY_FEELINGS),
    "sad": lambda r: r.choice(SAD_FEELINGS),
    "food": lambda r: r.choice(FOODS),
    "a_food": lambda r: (lambda f: f"{_article(f)} {f}")(r.choice(FOODS)),
    "animal": lambda r: r.choice(ANIMALS),
    "an_animal": lambda r: (lambda a: f"{_article(a)} {a}")(r.choice(ANIMALS)),
    "thing": lambda r: r.choice(OBJECTS),
    "a_thing": lambda r: (lambda o: f"{_article(o)} {o}")(r.choice(OBJECTS)),
    "act": lambda r: r.choice(ACTIVITIES)[1],
    "act_base": lambda r: r.choice(ACTIVITIES)[0],
    "time": lambda r: r.choice(TIMES),
    "weather": lambda r: r.choice(WEATHER),
    "spot": lambda r: r.choice(HIDING_SPOTS),
    "num": lambda r: r.choice(NUMBERS),
    "place2": lambda r: r.choice(PLACES)[1],
    "tool": lambda r: r.choice(TOOLS),
    "fix": lambda r: r.choice(FIXES),
    "shelter": lambda r: r.choice(SHELTERS),
    "family": lambda r: r.choice(FAMILY),
}


def _pronouns(prefix: str, girl: bool) -> Dict[str, str]:
    he, him, his = ("she", "her", "her") if girl else ("he", "him", "his")
    return {
        f"{prefix}he": he, f"{prefix}He": _cap(he), f"{prefix}him": him,
        f"{prefix}his": his, f"{prefix}His": _cap(his),
    }


class _StoryWriter:
    """Builds one story from a random cast; templates name the cast and fresh words as {fields}."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        r = rng
        hero_girl, friend_girl = r.random() < 0.5, r.random() < 0.5
        hero_name = r.choice(GIRL_NAMES if hero_girl else BOY_NAMES)
        friend_pool = [n for n in (GIRL_NAMES if friend_girl else BOY_NAMES) if n != hero_name]
        animal_story = r.random() < 0.3
        if animal_story:
            hero_kind, friend_kind = r.choice(ANIMALS), r.choice(ANIMALS)
        else:
            hero_kind = "girl" if hero_girl else "boy"
            friend_kind = "girl" if friend_girl else "boy"
        obj, obj_color, obj_adj = r.choice(OBJECTS), r.choice(COLORS), r.choice(OBJECT_ADJECTIVES)
        place, at_place = r.choice(PLACES)
        pet = r.choice(PETS)
        self.cast: Dict[str, str] = {
            "hero": hero_name, "kind": hero_kind, "a_kind": f"{_article(hero_kind)} {hero_kind}",
            "friend": r.choice(friend_pool), "fkind": friend_kind,
            "a_fkind": f"{_article(friend_kind)} {friend_kind}",
            "obj": obj, "objc": f"{obj_color} {obj}", "objadj": obj_adj,
            "a_obj": f"{_article(obj_adj)} {obj_adj} {obj_color} {obj}",
            "place": place, "at_place": at_place,
            "parent": r.choice(FAMILY), "pet": pet, "petname": r.choice(PET_NAMES),
            "sound": SOUNDS[pet],
            "like_base": r.choice(ACTIVITIES)[0],
        }
        self.cast.update(_pronouns("", hero_girl))
        self.cast.update(_pronouns("f", friend_girl))

    def say(self, template: str) -> str:
        """Fill one template: cast fields stay fixed, the others are drawn now."""
        values = {}
        for name in _fields(template):
            if name in self.cast:
                values[name] = self.cast[name]
            else:
                values[name] = _FRESH[name](self.rng)
        return _cap(template.format(**values))

    def pick(self, templates: Sequence[str]) -> str:
        return self.say(self.rng.choice(templates))

    def some(self, templates: Sequence[str], low: int, high: int) -> List[str]:
        """Between `low` and `high` distinct templates, filled, in a random order."""
        k = min(len(templates), self.rng.randint(low, high))
        return [self.say(t) for t in self.rng.sample(list(templates), k)]


# --- templates ----------------------------------------------------------------------------------

OPENINGS = [
    "Once upon a time, there was {a_kind} named {hero}.",
    "Once upon a time, {at_place}, there lived {a_kind} named {hero}.",
    "There was once a {cadj} {kind} called {hero}.",
    "{hero} was a {cadj} {kind} who lived {at_place}.",
    "Long ago, {at_place}, lived a {cadj} {kind}. {His} name was {hero}.",
    "In a little house {at_place}, there lived a {kind} named {hero}.",
]
INTRO = [
    "{He} lived with {his} {parent} and {his} {pet}, {petname}.",
    "{hero} loved to {like_base} every day.",
    "{His} best friend was {a_fkind} named {friend}.",
    "{He} had {a_obj} that {he} took everywhere.",
    "Every morning, {he} said hello to the {animal} that lived near {his} home.",
    "{hero} liked {color} things more than anything else.",
    "{His} favorite food was {a_food}.",
    "{He} was very {cadj}, and everyone liked {him}.",
    "{hero} always wanted to {act_base} with {his} friends.",
    "The {place} was {hero}'s favorite place in the whole world.",
    "{He} often went to the {place} to {act_base}.",
]
SCENE_OPENERS = [
    "{time}, {hero} and {friend} went to the {place}.",
    "{time}, {hero} woke up early. {weather}",
    "{time}, {hero} went outside to play. {weather}",
    "{time}, {hero}'s {parent} said, \"Let's go to the {place} today!\"",
    "{time}, {friend} came to visit {hero}.",
    "{time}, {hero} took {his} {pet}, {petname}, for a walk.",
]
SCENE_LINES = [
    "They {act} and laughed a lot.",
    "{hero} saw {an_animal} sitting {spot}.",
    "\"Look at that {adj} {animal}!\" said {friend}.",
    "\"Can we {act_base}?\" asked {hero}.",
    "\"Yes, let's go!\" said {friend} with a big smile.",
    "{friend} showed {hero} {a_thing} that {fhe} had found.",
    "They shared {a_food} and sat on the grass.",
    "{petname} the {pet} ran after them and said \"{sound}\".",
    "{hero} felt {happy} because the day was so nice.",
    "They saw {num} {color} birds flying over the trees.",
    "{friend} told {hero} a funny story about {an_animal}.",
    "{hero} picked up a {adj} stone and put it in {his} pocket.",
    "The {animal} watched them from far away.",
    "\"This is the best day ever,\" said {hero}.",
    "\"I like playing with you,\" {friend} said.",
    "They {act} until they were tired.",
    "{hero}'s {parent} brought them {a_food} and some water.",
    "They made a game where they had to {act_base} very fast.",
    "A {adj} {animal} came close and looked at them.",
    "{hero} smiled and waved at the {animal}.",
    "\"Where do you think the {animal} lives?\" asked {friend}.",
    "\"Maybe {spot},\" said {hero}.",
    "{weather}",
    "They counted {num} {color} flowers {place2}.",
    "{friend} was a little {sad}, so {hero} gave {fhim} a hug.",
    "After a while, {friend} felt {happy} again.",
    "They drew a picture of {an_animal} with a {color} crayon.",
    "\"Let's {act_base} again tomorrow,\" said {friend}.",
    "{hero} and {friend} sang a song about {a_thing}.",
    "The wind moved the trees, and the leaves went round and round.",
]
DESCRIPTIONS = [
    "The {place} was full of {color} flowers and tall trees.",
    "There were {num} ducks swimming in a line, and a {adj} {animal} was sleeping in the sun.",
    "The grass was soft and green, and the sky was very big.",
    "Near the path, there was a {adj} bench where old people liked to sit.",
    "Children were running and playing all around.",
    "A {animal} was eating {a_food} under a tree.",
    "The air smelled like {food} and fresh flowers.",
    "Far away, {hero} could see a {color} house with a {color} door.",
]

# Events: each is (setup, problem, dialogue, attempts, resolution) template lists.
EVENTS: Dict[str, Dict[str, List[str]]] = {
    "lost": {
        "setup": [
            "{time}, {hero} wanted to play with {his} {objc}.",
            "{hero} took {his} {objc} to the {place}.",
        ],
        "problem": [
            "But when {he} looked for it, the {obj} was gone!",
            "{He} put it down for a moment, and then {he} could not find it.",
            "Oh no! {His} {obj} was lost.",
        ],
        "dialogue": [
            "\"Where is my {obj}?\" cried {hero}. {He} felt very {sad}.",
            "\"Don't worry, I will help you look,\" said {friend}.",
            "\"When did you see it last?\" asked {friend}.",
            "\"I had it when we were playing,\" said {hero}.",
        ],
        "attempts": [
            "They looked {spot}, but it was not there.",
            "They looked {spot}. It was not there either.",
            "{friend} looked {spot} and {hero} looked {spot}.",
            "They asked {an_animal} if it had seen the {obj}, but it only blinked.",
            "{petname} sniffed the ground and ran in circles.",
        ],
        "resolution": [
            "At last, {petname} barked and ran {spot}. There was the {objc}!",
            "Then {friend} shouted, \"I found it!\" The {obj} was {spot}.",
            "Finally, {hero} saw something {color} {spot}. It was the {obj}!",
        ],
        "after": [
            "{hero} hugged {his} {obj} and said, \"Thank you, {friend}! You are a good friend.\"",
            "{hero} was so {happy}. From that day on, {he} always kept the {obj} close.",
        ],
    },
    "found": {
        "setup": [
            "{time}, {hero} was walking {at_place}.",
            "{hero} was playing {at_place} when {he} saw something strange.",
        ],
        "problem": [
            "On the ground, there was {a_obj}. It did not belong to {him}.",
            "{He} found {a_obj} lying {spot}. Whose could it be?",
        ],
        "dialogue": [
            "\"Look what I found!\" said {hero}.",
            "\"Is it yours?\" asked {friend}. \"No,\" said {hero}. \"Someone must be looking for it.\"",
            "\"We should find who it belongs to,\" said {friend}.",
            "\"Maybe we can keep it,\" said {friend}. But {hero} shook {his} head.",
        ],
        "attempts": [
            "They asked {an_animal}, but it was not its {obj}.",
            "They walked all around the {place} and asked everyone they met.",
            "They asked an old man on a bench, but he said no.",
            "{hero}'s {parent} said, \"It is kind to give things back.\"",
        ],
        "resolution": [
            "Then they saw {an_animal} crying {spot}. \"My {obj}!\" it said. \"I lost it this morning.\"",
            "At last, a little {kind} ran to them. \"That is my {obj}!\" {fhe} said with a big smile.",
            "Soon they met a sad {animal}. It had lost its {obj} a long time ago.",
        ],
        "after": [
            "{hero} gave the {obj} back, and everyone felt {happy}.",
            "\"Thank you for being honest,\" they said. {hero} felt warm inside.",
        ],
    },
    "sharing": {
        "setup": [
            "{time}, {hero} had {a_food} for a snack.",
            "{hero}'s {parent} gave {him} {a_food} and {a_obj}.",
        ],
        "problem": [
            "{friend} had nothing, and {fhe} looked very {sad}.",
            "{friend} wanted to play with the {obj} too, but {hero} did not want to share.",
        ],
        "dialogue": [
            "\"Can I have some?\" asked {friend}.",
            "\"No, it is mine!\" said {hero}. {friend} walked away and sat alone.",
            "\"Sharing is nice,\" said {hero}'s {parent} softly.",
            "{hero} thought about it for a long time.",
        ],
        "attempts": [
            "{hero} played alone, but it was not fun anymore.",
            "{He} looked at {friend}, who was sitting {spot}.",
            "{hero} remembered how it felt to be left out.",
        ],
        "resolution": [
            "So {hero} walked over and said, \"I'm sorry. Let's share.\"",
            "{hero} broke the {food} in two and gave half to {friend}.",
            "{He} gave {friend} the {obj} and said, \"You can have a turn.\"",
        ],
        "after": [
            "{friend} smiled. They played together all afternoon.",
            "Sharing made them both {happy}. It was more fun to play together.",
        ],
    },
    "stuck": {
        "setup": [
            "{time}, {hero} and {friend} were playing with {hero}'s {objc} {at_place}.",
            "{hero} threw {his} {obj} high up in the air.",
        ],
        "problem": [
            "The wind blew, and the {obj} got stuck in a tall tree!",
            "A little {animal} got stuck {spot} and could not get out.",
            "The {obj} landed on the roof of a shed, far out of reach.",
        ],
        "dialogue": [
            "\"Oh no! How will we get it down?\" said {hero}.",
            "\"I am too small to reach it,\" said {friend}.",
            "\"Let's think,\" said {hero}. \"There must be a way.\"",
            "\"We can ask for help,\" said {friend}.",
        ],
        "attempts": [
            "{hero} jumped as high as {he} could, but it was too high.",
            "{friend} tried to climb, but the branches were too thin.",
            "They tried to use {tool}, but it was not long enough.",
            "They threw a {adj} ball at it, but it did not move.",
        ],
        "resolution": [
            "Then {hero}'s {parent} came with {tool} and got it down.",
            "A tall man walked by and helped them. He reached up and got it.",
            "They worked together. {friend} held {tool}, and {hero} climbed up carefully.",
        ],
        "after": [
            "\"We did it!\" they cheered. They learned that working together helps.",
            "{hero} said thank you and promised to be more careful next time.",
        ],
    },
    "broken": {
        "setup": [
            "{time}, {hero} was playing with {his} {parent}'s {objc} inside the house.",
            "{hero} was running in the kitchen with {a_obj}.",
        ],
        "problem": [
            "Crash! The {obj} fell on the floor and broke.",
            "{He} dropped the {obj}, and it broke into {num} pieces.",
        ],
        "dialogue": [
            "{hero} felt {sad}. \"What will {parent} say?\" {he} thought.",
            "{He} wanted to hide the pieces {spot}.",
            "\"You should tell the truth,\" said {friend}.",
            "{hero} took a deep breath and went to find {his} {parent}.",
        ],
        "attempts": [
            "\"I broke the {obj},\" {hero} said. \"I am sorry.\"",
            "{His} {parent} looked at the pieces and then looked at {him}.",
            "{hero} was ready to cry.",
        ],
        "resolution": [
            "\"Thank you for telling me,\" said {his} {parent}. \"We can fix it with {fix}.\"",
            "{His} {parent} smiled and gave {him} a hug. Together they fixed it with {fix}.",
        ],
        "after": [
            "The {obj} was not perfect, but it was fixed. {hero} felt {happy} that {he} told the truth.",
            "{hero} learned that it is always better to be honest.",
        ],
    },
    "storm": {
        "setup": [
            "{time}, {hero} and {friend} had a picnic {at_place}.",
            "{hero} and {friend} went to {act_base} {at_place}.",
        ],
        "problem": [
            "Suddenly, big dark clouds came, and it started to rain very hard.",
            "The sky turned gray, and they heard loud thunder.",
        ],
        "dialogue": [
            "\"I am {sad}!\" said {friend}.",
            "\"Quick, let's find a place to stay dry!\" said {hero}.",
            "\"Hold my hand,\" said {hero}. \"We will be okay.\"",
        ],
        "attempts": [
            "They ran to {shelter} and waited there.",
            "They covered their heads with the picnic blanket.",
            "The rain was loud, so they sang a song to feel better.",
        ],
        "resolution": [
            "After a while, the rain stopped, and the sun came out again.",
            "Soon the storm was gone, and a big rainbow was in the sky.",
        ],
        "after": [
            "\"Look, a rainbow!\" said {friend}. They laughed and jumped in the puddles.",
            "They walked home wet but {happy}, and told {hero}'s {parent} all about it.",
        ],
    },
    "fear": {
        "setup": [
            "{hero} was afraid of {fear}.",
            "There was one thing {hero} did not like: {fear}.",
        ],
        "problem": [
            "{time}, {hero} had to face {fear}, and {his} legs were shaking.",
            "{time}, there was no way around it. {hero} felt very {sad}.",
        ],
        "dialogue": [
            "\"I can't do it,\" said {hero}.",
            "\"You are braver than you think,\" said {his} {parent}.",
            "\"I will stay with you,\" said {friend}.",
            "\"Take a deep breath and count to {num},\" said {friend}.",
        ],
        "attempts": [
            "{hero} closed {his} eyes and counted.",
            "{He} took one small step, and then another.",
            "{friend} held {his} hand the whole time.",
        ],
        "resolution": [
            "It was not so bad after all! {hero} even started to smile.",
            "Soon {hero} was not afraid anymore. It was fun!",
        ],
        "after": [
            "{hero} felt very {happy}. {He} learned that being brave means trying even when you are scared.",
            "From that day on, {hero} was not afraid of {fear} anymore.",
        ],
    },
    "lost_animal": {
        "setup": [
            "{time}, {hero} heard a small sound {spot}.",
            "{time}, {hero} was walking {at_place} when {he} heard someone crying.",
        ],
        "problem": [
            "It was a baby {animal}. It was lost and could not find its mother.",
            "A little {animal} was all alone and looked very {sad}.",
        ],
        "dialogue": [
            "\"Don't cry, little one,\" said {hero}. \"I will help you.\"",
            "\"Where is your mom?\" asked {hero}. The baby only shook its head.",
            "\"Let's look together,\" said {friend}.",
        ],
        "attempts": [
            "They looked {spot}, but nobody was there.",
            "They walked past the {place} and called, \"Hello! Is anyone looking for a baby?\"",
            "{hero} gave the baby a bit of {food} so it would not be hungry.",
        ],
        "resolution": [
            "Then a big mother {animal} came running. She was so happy to see her baby!",
            "At last they heard a loud call {spot}. It was the baby's mother!",
        ],
        "after": [
            "The mother said thank you, and {hero} waved goodbye. {He} felt {happy} all day.",
            "{hero} and {friend} smiled. Helping others made them feel good.",
        ],
    },
    "race": {
        "setup": [
            "{time}, there was a big race {at_place}.",
            "{time}, all the children wanted to race to the old tree.",
        ],
        "problem": [
            "{hero} ran very fast, but then {friend} fell down and hurt {fhis} knee.",
            "In the middle of the race, {friend} tripped and fell.",
        ],
        "dialogue": [
            "\"Ouch!\" cried {friend}.",
            "{hero} wanted to win, but {he} stopped.",
            "\"Are you okay?\" asked {hero}.",
            "\"Go on, you can still win,\" said {friend}.",
        ],
        "attempts": [
            "{hero} helped {friend} stand up.",
            "They walked slowly to the end together.",
            "The other children ran past them.",
        ],
        "resolution": [
            "They did not win the race, but everyone clapped for them.",
            "They were the last ones to finish, but the teacher gave them a {color} ribbon for being kind.",
        ],
        "after": [
            "\"You are a true friend,\" said {friend}. {hero} felt {happy}.",
            "{hero} learned that helping a friend is better than winning.",
        ],
    },
    "new_friend": {
        "setup": [
            "{time}, a new {fkind} came to the {place}. {fHis} name was {friend}.",
            "{time}, {hero} saw {a_fkind} sitting alone {at_place}.",
        ],
        "problem": [
            "{friend} was very shy and did not talk to anyone.",
            "Nobody played with {friend}, and {fhe} looked {sad}.",
        ],
        "dialogue": [
            "{hero} walked over and said, \"Hi! My name is {hero}. Do you want to play?\"",
            "\"Yes, please,\" said {friend} in a small voice.",
            "\"What do you like to do?\" asked {hero}. \"I like to {act_base},\" said {friend}.",
        ],
        "attempts": [
            "They {act} together.",
            "{hero} showed {friend} {his} {objc}.",
            "At first {friend} was quiet, but soon {fhe} started to laugh.",
        ],
        "resolution": [
            "By the end of the day, they were best friends.",
            "{friend} was not shy anymore. {fHe} had a new friend.",
        ],
        "after": [
            "Every day after that, {hero} and {friend} played together {at_place}.",
            "{hero} was glad {he} said hello. A small word can make a big friend.",
        ],
    },
}
ENDINGS = [
    "That night, {hero} went to bed with a big smile.",
    "It was a wonderful day, and {hero} would never forget it.",
    "And they all lived happily ever after.",
    "{hero} hugged {his} {parent} and said, \"I love you.\"",
    "When the sun went down, they all went home, tired and {happy}.",
    "The end.",
    "{hero} fell asleep and dreamed about the {place}.",
]


def _event_paragraphs(w: _StoryWriter, kind: str) -> List[str]:
    """The problem of a story and its resolution, as two or three paragraphs."""
    beats = EVENTS[kind]
    if kind == "fear":
        # The fear is part of the cast only for this event.
        w.cast["fear"] = w.rng.choice(FEARS)
    first = [w.pick(beats["setup"]), w.pick(beats["problem"])]
    middle = w.some(beats["dialogue"], 2, 4) + w.some(beats["attempts"], 1, 3)
    last = [w.pick(beats["resolution"])] + w.some(beats["after"], 1, 2)
    return [" ".join(first), " ".join(middle), " ".join(last)]


def _scene_paragraph(w: _StoryWriter) -> str:
    lines = [w.pick(SCENE_OPENERS)]
    if w.rng.random() < 0.4:
        lines += w.some(DESCRIPTIONS, 1, 2)
    lines += w.some(SCENE_LINES, 3, 7)
    return " ".join(lines)


def _words(paragraphs: Sequence[str]) -> int:
    return sum(len(p.split()) for p in paragraphs)


def make_story(rng: random.Random) -> str:
    """One story: intro, scenes until a drawn length, one or two events, an ending."""
    w = _StoryWriter(rng)
    # Most stories run 250-600 words; one in five is short, as in TinyStories.
    target = rng.randint(60, 250) if rng.random() < 0.2 else rng.randint(250, 600)
    intro = [" ".join([w.pick(OPENINGS)] + w.some(INTRO, 2, 5))]
    events = [_event_paragraphs(w, rng.choice(sorted(EVENTS)))]
    ending = [" ".join(w.some(ENDINGS, 1, 2))]
    scenes: List[str] = []
    while _words(intro + scenes + [p for e in events for p in e] + ending) < target:
        if len(events) < 2 and target > 450 and rng.random() < 0.25:
            events.append(_event_paragraphs(w, rng.choice(sorted(EVENTS))))
        else:
            scenes.append(_scene_paragraph(w))
    # Scenes come before the first event; a second event closes the day.
    split = rng.randint(0, len(scenes))
    body = scenes[:split] + events[0] + scenes[split:]
    for extra in events[1:]:
        body += extra
    return "\n".join(intro + body + ending)


def generate_stories(n_stories: int, seed: int) -> List[str]:
    """`n_stories` stories, identical for the same seed."""
    if n_stories < 1:
        raise ValueError(f"the number of stories (corpus.stories) must be at least 1, got {n_stories}")
    rng = random.Random(seed)
    return [make_story(rng) for _ in range(n_stories)]


def write_corpus(path: Path, n_stories: int, seed: int) -> None:
    """Write `n_stories` seeded stories to `path`, each followed by a `<|endoftext|>` line (atomically)."""
    stories = generate_stories(n_stories, seed)
    write_text(Path(path), "".join(f"{s}\n{STORY_SEPARATOR}\n" for s in stories))
