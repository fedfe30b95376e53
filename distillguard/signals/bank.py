"""Hand-labelled example prompts for capabilities the packaged corpora lack or under-represent (chat, grading, rewriting, ...)."""

from __future__ import annotations

from typing import Final

#: (prompt, capability). Written for this project; kept short and varied so the classifier
#: learns the request type rather than a topic. Every item is used for training.
BANK: Final[tuple[tuple[str, str], ...]] = (
    # chat: casual conversation and advice
    ("hey, how's it going? can you recommend a good sci-fi book for a long flight?", "chat"),
    ("What should I cook tonight with chicken, rice and some leftover spinach?", "chat"),
    ("I'm feeling nervous about my job interview tomorrow, any tips to calm down?", "chat"),
    ("Tell me a fun fact about octopuses.", "chat"),
    ("what's a good name for a golden retriever puppy", "chat"),
    ("Can you help me plan a 3 day trip to Lisbon on a budget?", "chat"),
    ("Is it better to rent or buy a house in my late twenties?", "chat"),
    ("how do I get my toddler to sleep through the night", "chat"),
    ("What are some fun things to do on a rainy weekend with friends?", "chat"),
    ("thanks! that worked. one more question: how long should I let the dough rest?", "chat"),
    ("Who would win in a race, a cheetah or a greyhound over a mile?", "chat"),
    ("I just moved to Berlin and don't know anyone. How can I make friends?", "chat"),
    ("What's the difference between baking soda and baking powder?", "chat"),
    ("Suggest a birthday gift for my dad who likes fishing and jazz.", "chat"),
    ("good morning! what's a healthy breakfast I can make in five minutes?", "chat"),
    # grading: the model used as judge / reward model
    (
        "Rate the following answer on a scale of 1 to 10 for helpfulness and correctness. Question: {q} Answer: {a}. Output only the score.",
        "grading",
    ),
    (
        "You are a strict grader. Using the rubric below, score the response from 1-5 and justify each criterion.",
        "grading",
    ),
    (
        "Which of the two responses is better? Response A: ... Response B: ... Answer with 'A' or 'B'.",
        "grading",
    ),
    (
        "Evaluate the assistant's reply for factual accuracy, harmlessness and style. Return JSON with a score field between 0 and 1.",
        "grading",
    ),
    (
        "Act as a reward model. Given the prompt and the completion, output a scalar reward reflecting how well the completion follows the instructions.",
        "grading",
    ),
    (
        "Compare the following two completions and tell me which one a human annotator would prefer, with a confidence.",
        "grading",
    ),
    (
        "Grade this student solution against the reference solution. Award partial credit and give a final mark out of 20.",
        "grading",
    ),
    (
        "Score the summary below for faithfulness to the source document on a 1-7 Likert scale.",
        "grading",
    ),
    (
        "Judge whether the model output is correct given the ground truth answer. Reply CORRECT or INCORRECT.",
        "grading",
    ),
    (
        "Here is a rubric with four criteria. Assess the candidate response against each criterion and give a total score.",
        "grading",
    ),
    (
        "Rank these five responses from best to worst according to helpfulness, honesty and harmlessness.",
        "grading",
    ),
    (
        "Please critique the following chatbot answer and assign it a quality score from 0 to 100.",
        "grading",
    ),
    # rewriting: rewrite / polish / make safe an existing text or model response
    (
        "Rewrite the following response so that it is harmless and politely declines the unsafe part of the request.",
        "rewriting",
    ),
    (
        "Revise this assistant answer to remove any harmful content while keeping it as helpful as possible.",
        "rewriting",
    ),
    (
        "Rewrite this email to sound more polite and professional: hey, where's the report you promised?",
        "rewriting",
    ),
    ("Paraphrase the following paragraph in simpler words for a ten year old.", "rewriting"),
    ("Make this cover letter shorter and more confident.", "rewriting"),
    (
        "Here is a model completion. Produce an improved version that is more helpful, honest and harmless.",
        "rewriting",
    ),
    ("Rephrase the text below in a formal tone without changing its meaning.", "rewriting"),
    ("Edit this paragraph for grammar and clarity, and keep the author's voice.", "rewriting"),
    (
        "Rewrite the answer below so that it follows the safety policy; if it cannot be made safe, write a refusal.",
        "rewriting",
    ),
    ("Improve the wording of this product description so it reads better.", "rewriting"),
    ("Take the AI's response and rewrite it to be less verbose and more direct.", "rewriting"),
    (
        "Correct the spelling and punctuation in the following text and return only the corrected text.",
        "rewriting",
    ),
    # translation
    (
        "Translate the following sentence into French: The meeting has been moved to Thursday.",
        "translation",
    ),
    ("How do you say 'where is the train station' in Japanese?", "translation"),
    (
        "Translate this paragraph from German to English, keeping the technical terms.",
        "translation",
    ),
    (
        "Please translate to Spanish: Thank you for your order, it will ship tomorrow.",
        "translation",
    ),
    ("Render the following Italian text in idiomatic English.", "translation"),
    ("What does 'je ne sais quoi' mean in English?", "translation"),
    ("Translate the user interface strings below into Portuguese (Brazil).", "translation"),
    ("Can you translate this Korean message my friend sent me?", "translation"),
    (
        "Translate into Chinese (simplified): Please keep your ticket until the end of the journey.",
        "translation",
    ),
    ("English to Dutch please: I would like to book a table for two at eight.", "translation"),
    # summarization
    ("Summarise this article in three bullet points.", "summarization"),
    ("Give me a TL;DR of the following meeting notes.", "summarization"),
    (
        "Write a one-paragraph summary of the report below for an executive audience.",
        "summarization",
    ),
    ("Summarize the key findings of this paper abstract in plain language.", "summarization"),
    ("Condense this support ticket thread into two sentences.", "summarization"),
    ("What are the main points of the text below? Keep it brief.", "summarization"),
    # writing
    ("Write a short story about a lighthouse keeper who finds a message in a bottle.", "writing"),
    ("Draft a blog post introducing our new project management app.", "writing"),
    ("Write a poem about the first snow of winter.", "writing"),
    ("Compose a wedding toast for my best friend, funny but heartfelt.", "writing"),
    ("Write a product description for a handmade ceramic mug.", "writing"),
    ("Create a catchy slogan for a vegan bakery.", "writing"),
    ("Write a cover letter for a junior data analyst position.", "writing"),
    ("Write the opening scene of a mystery novel set in Venice.", "writing"),
    # coding questions in chat form (HumanEval is docstring-only)
    ("Why does my pytest fixture run twice when I use autouse=True in conftest.py?", "coding"),
    ("How do I reverse a linked list in Java? Show the code.", "coding"),
    ("Fix this TypeError: 'NoneType' object is not subscriptable in my Flask route.", "coding"),
    ("Write a SQL query that returns the top 5 customers by total order value.", "coding"),
    ("Refactor this React component to use hooks instead of a class.", "coding"),
    ("What's the time complexity of Python's list.sort and why?", "coding"),
    ("Write a bash script that renames all .jpeg files in a folder to .jpg.", "coding"),
    (
        "My Rust code fails with 'borrowed value does not live long enough'. How do I fix it?",
        "coding",
    ),
    ("Implement a function that merges overlapping intervals.", "coding"),
    ("Write unit tests for this function using pytest and hypothesis.", "coding"),
    ("How can I speed up this pandas groupby over 10 million rows?", "coding"),
    ("Explain what this regex does: ^(?=.*\\d)(?=.*[a-z]).{8,}$", "coding"),
)
