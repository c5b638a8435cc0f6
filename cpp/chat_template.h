// Chat templates: turning a conversation into the prompt text a chat model
// was trained on.
//
// A GGUF carries the template as Jinja source (tokenizer.chat_template), as
// Hugging Face tokenizers do. kvrt does not run Jinja: like llama.cpp's
// llama_chat_apply_template it recognises the template family by markers in
// the source and formats in C++. The text produced equals what transformers'
// apply_chat_template renders for the published templates of each family:
//
//   chatml        <|im_start|>role\ncontent<|im_end|>\n       SmolLM2, Qwen2/2.5
//                 A default system prompt written into the template (when
//                 the conversation has none) is taken from its source.
//   llama3        <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>
//                 BOS first, content trimmed (Meta-Llama-3-Instruct).
//   llama3.1      llama3 with a system turn always first, opening with
//                 "Cutting Knowledge Date: December 2023\nToday Date: <date>\n\n"
//                 (Llama 3.1/3.2/3.3). The date is the template's fixed
//                 date_string, or today's when it calls strftime_now (3.2).
//   llama2        <s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nuser [/INST] reply </s>
//                 BOS before every [INST], content stripped (Llama-2-chat).
//   mistral-v1    <s> [INST] sys\n\nuser [/INST] reply</s>
//   mistral-v3    <s>[INST] user[/INST] reply</s>; the system prompt joins the
//                 last user message (Mistral-7B-Instruct-v0.3, Large-2407).
//   mistral-v3-tekken  the same without the spaces around [INST] (Nemo).
//   mistral-v7    <s>[SYSTEM_PROMPT] sys[/SYSTEM_PROMPT][INST] user[/INST] reply</s>
//                 (Mistral-Large-Instruct-2411).
//   mistral-v0    <s>[INST] user [/INST]reply</s>, no system role
//                 (Mistral-7B-Instruct-v0.1/v0.2, Mixtral).
//
// BOS: llama3, llama2 and the mistral families write the BOS token's text
// into the prompt (as the Jinja does with bos_token), chatml does not. The
// prompt is therefore tokenized with special tokens parsed and without the
// tokenizer adding a BOS of its own, as transformers does for chat prompts.
#pragma once

#include <string>
#include <vector>

namespace kvrt {

enum chat_template_kind {
    CHAT_TEMPLATE_CHATML,
    CHAT_TEMPLATE_LLAMA3,
    CHAT_TEMPLATE_LLAMA31,
    CHAT_TEMPLATE_LLAMA2,
    CHAT_TEMPLATE_MISTRAL_V0,
    CHAT_TEMPLATE_MISTRAL_V1,
    CHAT_TEMPLATE_MISTRAL_V3,
    CHAT_TEMPLATE_MISTRAL_V3_TEKKEN,
    CHAT_TEMPLATE_MISTRAL_V7,
};

struct chat_message {
    std::string role;  // "system", "user" or "assistant"
    std::string content;
};

struct chat_template {
    chat_template_kind kind = CHAT_TEMPLATE_CHATML;
    std::string default_system;  // chatml: used when the conversation has no system message
    std::string date;            // llama3.1: "Today Date"; empty: today, as "%d %b %Y"
    std::string bos;             // token texts the template writes
    std::string eos;
};

// Names accepted by --chat-template, comma separated, for messages.
std::string chat_template_names();
const char* chat_template_name(chat_template_kind k);
// Throws kvrt::error for a name that is not a family.
chat_template_kind chat_template_from_name(const std::string& name);

// Recognises the family of Jinja source; throws kvrt::error ("chat template
// not understood; supported: ...") when no family matches.
chat_template chat_template_detect(const std::string& jinja, const std::string& bos,
                                   const std::string& eos);

// The family named by `name`, else the one detected in `jinja`. A ChatML
// family keeps the template's default system prompt either way.
chat_template chat_template_select(const std::string& jinja, const std::string& name,
                                   const std::string& bos, const std::string& eos);

// The prompt text of a conversation. add_generation_prompt appends the
// opening of an assistant turn (families whose templates ignore it: none).
// Throws kvrt::error for a role the family does not know, or for a
// conversation whose roles do not alternate where the template requires it.
std::string chat_template_apply(const chat_template& t, const std::vector<chat_message>& messages,
                                bool add_generation_prompt);

}  // namespace kvrt
