"""The built-in models' English: the words their corpus is written in.

Two stages write text the tiny models must find natural: ``tinymodels.corpus`` trains them on
it, and ``reference.long_prompts`` fills long prompts with it (a model meets its own words past
the window, so a degradation there is the window's, not unfamiliar text). Neither stage may
import the other, so the words live one stage below both.
"""

from __future__ import annotations

__all__ = ["ADJECTIVES", "ANIMALS", "COLORS", "FOODS", "HOMES", "PLACES", "SOUNDS", "VERBS"]

ANIMALS = ["cat", "dog", "bird", "fish", "fox", "owl", "horse", "frog", "bee", "mouse"]
SOUNDS = dict(cat="meow", dog="woof", bird="tweet", fish="blub", fox="yip", owl="hoot",
              horse="neigh", frog="ribbit", bee="buzz", mouse="squeak")
HOMES = dict(cat="a house", dog="a kennel", bird="a nest", fish="the sea", fox="a den",
             owl="a tree", horse="a stable", frog="a pond", bee="a hive", mouse="a hole")
FOODS = dict(cat="fish", dog="bones", bird="seeds", fish="worms", fox="berries", owl="mice",
             horse="hay", frog="flies", bee="nectar", mouse="cheese")
COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
PLACES = ["river", "forest", "garden", "hill", "lake", "city", "field", "beach"]
ADJECTIVES = ["big", "small", "happy", "quiet", "quick", "old", "young", "brave"]
VERBS = ["runs", "walks", "jumps", "swims", "flies", "hops", "rolls", "dances"]
